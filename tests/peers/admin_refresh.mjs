// Drives the admin page in Debian's Chromium (headless) through a map refresh:
//     node admin_refresh.mjs PAGE_URL ADMIN_TOKEN ARTIFACTS_DIR
// The corpus on disk has already changed; the page shows map 1, a category is hidden and the map
// zoomed, then a refresh is asked for over HTTP. Prints one JSON line of what it saw; exits
// non-zero with the reason on the first failed check.
import { chromium } from "playwright-core";
import { launchOptions } from "./chromium.mjs";

const [pageUrl, token, artifacts] = process.argv.slice(2);

const check = (ok, message) => {
  if (!ok) {
    console.error(`admin refresh: ${message}`);
    process.exit(1);
  }
};

const browser = await chromium.launch(launchOptions);
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  let loads = 0;
  page.on("load", () => loads++);
  await page.goto(pageUrl);
  await page.fill("#token", token);
  await page.click("#sign-in button[type=submit]");
  await page.waitForFunction(() => window.__adminMap.state === "ready" && window.__adminMap.generation === 1n, null, { timeout: 120000 });

  // Hide one category, zoom in, and leave a mark that a reload would wipe.
  const hiddenCategory = await page.evaluate(() => window.__adminMap.view.categories[0]);
  await page.click(`#legend button[data-category="${hiddenCategory}"]`);
  await page.focus("#map");
  await page.keyboard.press("+");
  await page.keyboard.press("+");
  const before = await page.evaluate(() => {
    window.__sameDocument = true;
    const view = window.__adminMap.view;
    return { scale: view.scale, offsetX: view.offsetX, offsetY: view.offsetY, drawn: view.drawnPoints, total: view.points.length };
  });
  check(before.drawn < before.total, `hiding ${hiddenCategory} hid nothing (${before.drawn} of ${before.total})`);
  // A first map has nothing to compare with.
  const compareDisabledOnFirst = await page.isDisabled("#compare");

  const refresh = await page.evaluate(async (token) => {
    const response = await fetch("/api/admin/embedding-map/refresh", { method: "POST", headers: { authorization: `Bearer ${token}` } });
    return response.status;
  }, token);
  check(refresh === 202, `the refresh request answered ${refresh}`);
  // While it computes, the line beside the map says so (the map stays on screen).
  await page.waitForFunction(() => document.querySelector("#map-refresh").textContent.startsWith("updating"), null, { timeout: 60000 });
  const updatingText = await page.textContent("#map-refresh");
  const stateWhileUpdating = await page.evaluate(() => window.__adminMap.state);
  await page.waitForFunction(() => window.__adminMap.generation === 2n, null, { timeout: 120000, polling: "raf" });
  // The new version moves in: an animation (kept points glide, added ones fade in), then rest.
  await page.waitForFunction(() => !window.__adminMap.animating, null, { timeout: 10000 });
  const transitions = await page.evaluate(() => window.__adminMap.transitions);
  const transitionFrames = await page.evaluate(() => window.__adminMap.transitionFrames);
  await page.waitForFunction(() => document.querySelector("#map-refresh").textContent === "", null, { timeout: 60000 });
  const after = await page.evaluate((category) => {
    const view = window.__adminMap.view;
    return {
      sameDocument: window.__sameDocument === true,
      stillHidden: view.hidden.has(category),
      scale: view.scale, offsetX: view.offsetX, offsetY: view.offsetY,
      drawn: view.drawnPoints, total: view.points.length,
      summary: document.querySelector("#map-summary").textContent,
    };
  }, hiddenCategory);
  await page.screenshot({ path: `${artifacts}/admin-refreshed.png` });

  // Compare with the previous map: points coloured by how far they moved, the added ones marked.
  await page.click("#compare");
  await page.waitForFunction(() => window.__adminMap.compared !== null, null, { timeout: 30000 });
  const compared = await page.evaluate(() => ({
    ...window.__adminMap.compared,
    addedIds: window.__adminMap.addedIds,
    pressed: document.querySelector("#compare").getAttribute("aria-pressed"),
    legend: window.__adminMap.legend,
    gradients: document.querySelectorAll("#legend .gradient").length,
    drawn: window.__adminMap.drawnPoints,
    inLink: location.hash.includes("compare=1"),
  }));
  await page.screenshot({ path: `${artifacts}/admin-compare.png` });
  // Off again: the colours by category come back.
  await page.click("#compare");
  const off = await page.evaluate((category) => ({
    colorBy: window.__adminMap.colorBy,
    compared: window.__adminMap.compared,
    stillHidden: window.__adminMap.view.hidden.has(category),
  }), hiddenCategory);
  check(errors.length === 0, `page errors: ${errors}`);
  console.log(JSON.stringify({ hiddenCategory, before, after, updatingText, stateWhileUpdating, loads, transitions, transitionFrames, compareDisabledOnFirst, compared, off }));
} finally {
  await browser.close();
}
