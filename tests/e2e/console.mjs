// End-to-end test of the web console in headless Chromium, driven by playwright-core.
// Run by tests/console.rs against a real server:
//   node console.mjs <base-url> <keyed-base-url> <api-key> <digit.png> <digit-label> <screenshot-dir>
// Exits non-zero, naming the failed step, when anything the console should show does not appear.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const [base, keyedBase, apiKey, digitPath, digitLabel, shots] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const STEP_TIMEOUT = 60_000;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // A closed network: no background connections, no first-run work.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = "start";
const problems = [];

async function open(url, viewport = { width: 1280, height: 1000 }) {
  const page = await browser.newPage({ viewport });
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => { if (message.type() === "error") problems.push(`console error: ${message.text()}`); });
  await page.goto(url);
  return page;
}

async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage });
}

/// Waits until an <img> has finished loading a picture the browser could decode.
async function imageLoaded(page, selector) {
  await page.waitForFunction((s) => {
    const img = document.querySelector(s);
    return img && !img.hidden && img.complete && img.naturalWidth > 0;
  }, selector);
}

try {
  step = "load the console";
  const page = await open(base);
  await page.waitForSelector("#model option[data-default]", { state: "attached" });
  assert.match(await page.locator("#model option:checked").textContent(), /mnist-ssvae v1 .*\(default\)/);
  await page.locator("#model-details", { hasText: "test accuracy" }).waitFor();
  await imageLoaded(page, "#sample-grid");

  step = "sample label 3";
  await page.click('#labels button[data-label="3"]');
  await page.waitForSelector('#sample-grid[data-label="3"]', { state: "attached" });
  await imageLoaded(page, "#sample-grid");
  assert.equal(await page.getAttribute('#labels button[data-label="3"]', "aria-pressed"), "true");
  const grid = await page.$eval("#sample-grid", (img) => [img.naturalWidth, img.naturalHeight]);
  assert.ok(grid[0] >= 6 * 28 && grid[1] >= 6 * 28, `a 36-sample grid is at least 168 px wide, got ${grid}`);
  await shot(page, "1-sample-label-3");

  step = "another batch";
  const before = await page.getAttribute("#sample-grid", "src");
  await page.click("#another-batch");
  await page.waitForFunction((old) => document.querySelector("#sample-grid").getAttribute("src") !== old, before);
  assert.equal(await page.inputValue("#seed"), "1");

  step = "interpolate between labels";
  await page.selectOption("#interp-from", "1");
  await page.selectOption("#interp-to", "7");
  await page.click('#interpolate-labels button[type="submit"]');
  await imageLoaded(page, "#interp-strip");

  step = "interpolate between two uploaded images";
  const labelStrip = await page.getAttribute("#interp-strip", "src");
  await page.setInputFiles("#interp-first", digitPath);
  await page.setInputFiles("#interp-second", digitPath);
  await page.click('#interpolate-images button[type="submit"]');
  await page.waitForFunction((old) => document.querySelector("#interp-strip").getAttribute("src") !== old, labelStrip);
  await imageLoaded(page, "#interp-strip");

  step = "draw a stroke";
  const pad = await page.locator("#pad").boundingBox();
  await page.mouse.move(pad.x + pad.width * 0.5, pad.y + pad.height * 0.15);
  await page.mouse.down();
  for (let i = 1; i <= 12; i++) await page.mouse.move(pad.x + pad.width * 0.5, pad.y + pad.height * (0.15 + 0.06 * i));
  await page.mouse.up();
  await page.waitForFunction(() => document.querySelectorAll("#probabilities li").length === 10);
  await imageLoaded(page, "#reconstruction");
  const total = await page.$$eval("#probabilities [role=meter]", (meters) => meters.reduce((sum, m) => sum + Number(m.getAttribute("aria-valuenow")), 0));
  assert.ok(Math.abs(total - 1) < 0.02, `probabilities sum to 1, got ${total}`);
  assert.match(await page.textContent("#prediction"), /^Looks like \d/);
  await shot(page, "2-drawn-stroke");

  step = "upload a test digit";
  await page.click("#clear-pad");
  assert.equal(await page.textContent("#prediction"), "");
  await page.setInputFiles("#upload", digitPath);
  await page.waitForSelector(`#prediction[data-label="${digitLabel}"]`, { state: "attached" });
  await imageLoaded(page, "#reconstruction");
  await imageLoaded(page, "#input-preview");
  assert.match(await page.textContent("#reconstruction-score"), /ELBO -?\d/);
  await shot(page, "3-uploaded-digit");

  step = "a bad training request shows the API's message";
  await page.fill("#train-name", "console-job");
  await page.fill("#train-dataset", "no-such-dataset");
  await page.click('#train-form button[type="submit"]');
  await page.locator("#error", { hasText: "no-such-dataset" }).waitFor();
  assert.match(await page.textContent("#error-text"), /HTTP 422/);
  await page.click("#error-close");

  step = "train one epoch and watch it";
  await page.selectOption("#train-architecture", "mlp");
  await page.fill("#train-dataset", "mnist");
  await page.fill("#train-epochs", "1");
  await page.fill("#train-max", "1000");
  await page.click('#train-form button[type="submit"]');
  await page.waitForSelector("#jobs tbody tr.watched", { state: "attached" });
  await page.waitForSelector('#chart[data-epochs="1"]', { state: "attached", timeout: 180_000 });
  await page.waitForSelector("#chart circle.validation_negative_elbo", { state: "attached" });
  assert.equal(await page.locator("#epochs tbody tr").count(), 1);
  await page.waitForSelector('#model option[value="console-job@1"]', { state: "attached", timeout: 120_000 });
  await page.waitForSelector('#jobs tbody tr.watched[data-state="succeeded"]', { state: "attached" });
  assert.equal(await page.isVisible("#error"), false, `no error expected, got: ${await page.textContent("#error-text")}`);
  await shot(page, "4-trained");

  step = "the new model can be picked and sampled";
  await page.selectOption("#model", "console-job@1");
  await page.locator("#model-details", { hasText: "console-job v1" }).waitFor();
  await page.waitForSelector('#labels button:not([data-label])', { state: "attached" });
  assert.equal(await page.locator("#labels button[data-label]").count(), 0, "an MLP model has no class buttons");
  await imageLoaded(page, "#sample-grid");

  step = "phone width";
  const phone = await open(base, { width: 390, height: 844 });
  await imageLoaded(phone, "#sample-grid");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px at phone width`);
  await shot(phone, "5-phone");

  step = "a server with an API key";
  const keyed = await open(keyedBase);
  await keyed.locator("#error", { hasText: "HTTP 401" }).waitFor();
  assert.match(await keyed.textContent("#error-text"), /API key/);
  await keyed.fill("#api-key", apiKey);
  await keyed.click('#key-form button[type="submit"]');
  await keyed.waitForSelector("#model option[data-default]", { state: "attached" });
  await imageLoaded(keyed, "#sample-grid");
  assert.equal(await keyed.isVisible("#error"), false);
  assert.equal(await keyed.evaluate(() => sessionStorage.getItem("vae-serve-api-key")), apiKey);

  step = "no errors in the page";
  const unexpected = problems.filter((p) => !/401|422/.test(p));
  assert.deepEqual(unexpected, []);
  console.log("console e2e: all steps passed");
} catch (error) {
  console.error(`console e2e failed at step "${step}": ${error.stack || error}`);
  if (problems.length) console.error(`page problems:\n${problems.join("\n")}`);
  for (const [i, page] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await page.screenshot({ path: path.join(shots, `failure-${i}.png`), fullPage: true }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
