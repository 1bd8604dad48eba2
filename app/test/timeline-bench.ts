// The lead's timeline on a big project, in headless Chromium (bench/app_timeline.py runs it):
//   node test-dist/timeline-bench.js '{"base": "127.0.0.1:PORT", "token": "...", "project": "...", "chromium": "..."}'
// First the sign-in link bootstraps the project into IndexedDB (timed, for reference); then
// the timeline screen is loaded again, as a lead opens it on a later day: timed from the
// navigation's start until the timeline's first frame is painted (the app's code, the
// project read from IndexedDB, the layout and the bars in view). Prints one JSON line.
import { chromium } from "playwright-core";

interface Args {
  base: string;
  token: string;
  project: string;
  chromium: string;
  runs?: number;
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const origin = `http://${args.base}`;

async function main(): Promise<void> {
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"] });
  try {
    const context = await browser.newContext({ viewport: { width: 1024, height: 768 }, timezoneId: "UTC" });
    const page = await context.newPage();
    const started = Date.now();
    await page.goto(`${origin}/app/#token=${encodeURIComponent(args.token)}&project=${args.project}`);
    await page.waitForFunction("window.fieldsyncApp?.store !== null && window.fieldsyncApp?.store !== undefined", undefined, { timeout: 300_000, polling: 50 });
    const bootstrapMs = Date.now() - started;
    const activities = (await page.evaluate("window.fieldsyncApp.store.activities.size")) as number;
    const renders: number[] = [];
    for (let run = 0; run < (args.runs ?? 3); run++) {
      await page.goto(`${origin}/app/#/timeline`);
      if (run === 0) await page.reload(); // the hash change alone would not reload the page
      await page.waitForFunction("window.fieldsyncApp?.timings?.timelineRendered !== undefined", undefined, { timeout: 120_000, polling: 20 });
      renders.push((await page.evaluate("window.fieldsyncApp.timings.timelineRendered")) as number);
      await page.goto("about:blank");
    }
    console.log(JSON.stringify({ activities, bootstrapMs, renders }));
  } finally {
    await browser.close();
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exit(1);
});
