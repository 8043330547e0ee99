import { fileURLToPath } from "node:url";
import { join } from "node:path";

/** clients/typescript/, wherever the compiled test runs from. */
export const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));
export const PROTO_DIR = join(PACKAGE_DIR, "..", "..", "proto");
