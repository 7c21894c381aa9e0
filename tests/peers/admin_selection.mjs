// Selection on the admin page, in Debian's Chromium at 1280x900:
//     node admin_selection.mjs PAGE_URL ADMIN_TOKEN ARTIFACTS_DIR
// A box and a lasso drawn with the mouse, each checked against the api-service's polygon query on
// the same generation; the export downloaded; the page's link opened in a new browser; Escape.
// Prints one JSON line of what it saw.
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";
import { launchOptions } from "./chromium.mjs";

const [pageUrl, token, artifacts] = process.argv.slice(2);
const browser = await chromium.launch(launchOptions);

async function signedIn(url) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#sign-in button[type=submit]");
  await page.waitForFunction(() => window.__adminMap.state === "ready" && window.__adminMap.drawnPoints > 0, null, { timeout: 120000 });
  return page;
}

/** The api-service's answer for `polygon` on the page's generation, every page of it. */
async function apiSelection(page, polygon) {
  return page.evaluate(async ([polygon, token]) => {
    const generation = Number(window.__adminMap.generation);
    const ids = [];
    let pageToken = null;
    do {
      const response = await fetch("/api/admin/embedding-map/select", {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ generation, polygon, page_size: 500, page_token: pageToken }),
      });
      const answer = await response.json();
      ids.push(...answer.points.map((p) => p.id));
      pageToken = answer.next_page_token ?? null;
    } while (pageToken);
    return ids.sort((a, b) => a - b);
  }, [polygon, token]);
}

const errors = [];
try {
  const page = await signedIn(pageUrl);
  const canvas = await page.locator("#map").boundingBox();
  const at = (fx, fy) => [canvas.x + canvas.width * fx, canvas.y + canvas.height * fy];

  // A box, from the keyboard's B and a mouse drag.
  await page.focus("#map");
  await page.keyboard.press("b");
  await page.mouse.move(...at(0.3, 0.3));
  await page.mouse.down();
  await page.mouse.move(...at(0.45, 0.5), { steps: 5 });
  await page.mouse.move(...at(0.62, 0.68), { steps: 5 });
  await page.mouse.up();
  const box = await page.evaluate(() => ({
    ids: window.__adminMap.regionIds,
    polygon: window.__adminMap.regionPolygon,
    drawn: window.__adminMap.drawnPoints,
    total: window.__adminMap.totalPoints,
    panel: !document.querySelector("#selection-panel").hidden,
    count: document.querySelector("#selection-count").textContent,
    names: document.querySelectorAll("#selection-names li").length,
    categories: document.querySelectorAll("#selection-categories li").length,
  }));
  box.api = await apiSelection(page, box.polygon);
  await page.screenshot({ path: `${artifacts}/admin-selection.png` });

  // The export of the selection: a download whose rows are the selection's points.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#selection-export")]);
  const csv = await readFile(await download.path(), "utf8");
  const lines = csv.trim().split("\n");
  const exported = {
    header: lines[0],
    ids: lines.slice(1).map((line) => Number(line.split(",")[0])).sort((a, b) => a - b),
    name: download.suggestedFilename(),
  };

  // A lasso: L, then a path through several points.
  await page.focus("#map");
  await page.keyboard.press("l");
  await page.mouse.move(...at(0.2, 0.6));
  await page.mouse.down();
  for (const [fx, fy] of [[0.35, 0.25], [0.55, 0.3], [0.7, 0.55], [0.5, 0.8], [0.3, 0.75], [0.22, 0.62]]) {
    await page.mouse.move(...at(fx, fy), { steps: 4 });
  }
  await page.mouse.up();
  const lasso = await page.evaluate(() => ({ ids: window.__adminMap.regionIds, polygon: window.__adminMap.regionPolygon }));
  lasso.api = await apiSelection(page, lasso.polygon);

  // Colour by a numeric attribute (a scale from its lowest to its highest value), then by a text
  // one (its values as categories in the legend; `digit` is numeric too, `parity` is text).
  await page.selectOption("#color-by", "row");
  await page.waitForFunction(() => window.__adminMap.colorBy?.field === "row");
  const numeric = await page.evaluate(() => ({
    colorBy: window.__adminMap.colorBy,
    legend: window.__adminMap.legend,
    gradients: document.querySelectorAll("#legend .gradient").length,
    drawn: window.__adminMap.drawnPoints,
  }));
  await page.screenshot({ path: `${artifacts}/admin-color-numeric.png` });
  await page.selectOption("#color-by", "parity");
  await page.waitForFunction(() => window.__adminMap.colorBy?.field === "parity");
  const text = await page.evaluate(() => ({
    colorBy: window.__adminMap.colorBy,
    buttons: document.querySelectorAll("#legend button").length,
    categories: window.__adminMap.view.categories.length,
  }));
  const colored = { numeric, text };

  // Zoom in, hide a value of the field, then open the page's link in another browser context.
  await page.mouse.move(...at(0.5, 0.5));
  await page.mouse.wheel(0, -300);
  await page.click('#legend button[data-category="odd"]');
  await page.waitForTimeout(500);
  const link = page.url();
  const before = await page.evaluate(() => ({
    view: window.__adminMap.view.viewState,
    drawn: window.__adminMap.drawnPoints,
    ids: window.__adminMap.regionIds,
  }));
  const other = await signedIn(link);
  await other.waitForFunction(() => window.__adminMap.colorBy?.field === "parity");
  const restored = await other.evaluate(() => ({
    colorBy: window.__adminMap.colorBy,
    view: window.__adminMap.view.viewState,
    drawn: window.__adminMap.drawnPoints,
    ids: window.__adminMap.regionIds,
    hash: location.hash,
  }));
  restored.tokenInLink = link.includes(token);

  // Escape clears the selection and its panel.
  await page.focus("#map");
  await page.keyboard.press("Escape");
  const cleared = await page.evaluate(() => ({
    ids: window.__adminMap.regionIds.length,
    panel: !document.querySelector("#selection-panel").hidden,
  }));
  console.log(JSON.stringify({ box, exported, lasso, colored, before, restored, cleared, errors }));
} finally {
  await browser.close();
}
