export * from "./client.js";
export * from "./plans.js";
export * from "./validation.js";
export * from "./generated/types.js";
export { CHANNELS, CONTRACT_VERSION } from "./generated/channels.js";
