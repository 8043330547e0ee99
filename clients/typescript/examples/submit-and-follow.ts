// Submit a goal to a running stack (`swarm up`), print each event of its run, then the answer.
//   npm run example -- "Compare solar, wind and hydro power"
// SWARM_NATS_URL picks the NATS server (default nats://127.0.0.1:4222).
import { SwarmClient, TaskInvalid } from "../src/index.js";

const goal = process.argv.slice(2).join(" ") || "Compare solar, wind and hydro power in Germany, Spain and Norway";
const client = await SwarmClient.connect({ servers: process.env.SWARM_NATS_URL ?? "nats://127.0.0.1:4222" });
try {
  const { runId } = await client.submit({ goal, pattern: "map-reduce", n_agents: 3 });
  console.log(`submitted run ${runId}`);
  for await (const event of client.follow(runId, { timeoutMs: 600_000 })) {
    switch (event.kind) {
      case "planned":
        // `follow` reads a plan sent by reference; the counts stand in if it could not.
        console.log(
          `planned: ${event.plan?.steps.length ?? event.steps_count} steps by ${event.plan?.agents.length ?? event.agents_count} agents (${event.source})`,
        );
        break;
      case "progress":
        console.log(`progress: ${event.steps_succeeded}/${event.steps_total} steps`);
        break;
      case "completed":
        console.log(`\n${event.answer}\n\n${event.summary.steps_succeeded} steps, ${event.summary.wall_ms} ms`);
        break;
      case "rejected":
        console.log(`rejected: ${(event.reasons ?? []).map((r) => `${r.path} ${r.code}: ${r.message}`).join("; ")}`);
        break;
      default:
        console.log(event.kind);
    }
  }
} catch (error) {
  if (error instanceof TaskInvalid) console.error(error.reasons);
  throw error;
} finally {
  await client.close();
}
