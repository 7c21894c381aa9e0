// Drives the admin page in Debian's Chromium (headless) against the real services:
//     node admin_page.mjs PAGE_URL ADMIN_TOKEN ARTIFACTS_DIR DEMO_CORPUS CORPUS
// The embedding service is started on CORPUS before it exists; the script copies DEMO_CORPUS there
// once the page shows that failure, and the service's corpus watch computes the map.
// Prints one JSON line of what it saw; exits non-zero with the reason on the first failed check.
import { copyFileSync, renameSync } from "node:fs";
import { chromium } from "playwright-core";
import { launchOptions } from "./chromium.mjs";

const [pageUrl, token, artifacts, demoCorpus, corpus] = process.argv.slice(2);

const check = (ok, message) => {
  if (!ok) {
    console.error(`admin page: ${message}`);
    process.exit(1);
  }
};

const browser = await chromium.launch(launchOptions);
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const state = () => page.evaluate(() => window.__adminMap.state);
  // Content-Security-Policy violations and page errors, and the map calls the page makes.
  const violations = [];
  page.on("console", (message) => {
    if (/Content Security Policy|Refused to/i.test(message.text())) violations.push(message.text());
  });
  page.on("pageerror", (error) => violations.push(String(error)));
  const mapCalls = [];
  page.on("request", (request) => {
    const method = request.url().split("/").pop();
    if (method === "GetEmbeddingMap") mapCalls.push(method);
    // A watch that asks for points (omit_points unset: no field 1 = 1 in its message) downloads the map too.
    if (method === "WatchEmbeddingMap") {
      const body = [...(request.postDataBuffer() ?? [])];
      mapCalls.push(body.slice(-2).join(",") === "8,1" ? "WatchEmbeddingMap(summary)" : "WatchEmbeddingMap(points)");
    }
  });
  const response = await page.goto(pageUrl);
  const csp = response.headers()["content-security-policy"] ?? "";
  check(csp.includes("frame-ancestors 'none'"), `the page's CSP is ${JSON.stringify(csp)}`);

  // A wrong token: the 401 message, and back to the sign-in form.
  await page.fill("#token", "not-the-admin-token-0000");
  await page.click("#sign-in button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent.includes("401"), null, { timeout: 15000 });
  const unauthorized = await page.textContent("#sign-in-error");

  // The right token: the corpus is missing, and the page says so.
  await page.fill("#token", token);
  await page.click("#sign-in button[type=submit]");
  await page.waitForFunction(() => window.__adminMap.state === "failed", null, { timeout: 30000 });
  const failedText = await page.textContent("#status-detail");

  // The corpus written elsewhere and renamed into place, as tools do: computing with progress.
  copyFileSync(demoCorpus, `${corpus}.part`);
  renameSync(`${corpus}.part`, corpus);
  await page.waitForFunction(() => document.querySelector("#status-detail").textContent.includes("Iteration"), null, { timeout: 60000 });
  check((await state()) === "computing", "the computing state was not shown");
  const progressText = await page.textContent("#status-detail");
  await page.screenshot({ path: `${artifacts}/admin-computing.png` });
  await page.waitForFunction(() => document.querySelector("#status-detail").textContent.includes("s left"), null, { timeout: 60000 });
  const etaText = await page.textContent("#status-detail");

  // Ready: every point of the map drawn.
  await page.waitForFunction(() => window.__adminMap.state === "ready" && window.__adminMap.totalPoints > 0, null, { timeout: 120000 });
  const total = await page.evaluate(() => window.__adminMap.totalPoints);
  const drawn = await page.evaluate(() => window.__adminMap.drawnPoints);
  check(drawn === total, `drew ${drawn} of ${total} points`);
  await page.screenshot({ path: `${artifacts}/admin-ready.png` });
  const downloads = mapCalls.filter((method) => !method.endsWith("(summary)")).length;
  check(downloads === 1, `the page downloaded the map ${downloads} times (calls: ${mapCalls.join(", ")})`);

  // Hover a point and read its name.
  await page.locator("#map").scrollIntoViewIfNeeded();
  const box = await page.locator("#map").boundingBox();
  const target = await page.evaluate(() => {
    const position = window.__adminMap.screenPosition(0);
    const picked = window.__adminMap.view.pick(position.x, position.y);
    return { position, label: `${picked.name} · ${picked.category}` };
  });
  await page.mouse.move(box.x + target.position.x, box.y + target.position.y);
  await page.waitForSelector("#tooltip:not([hidden])", { timeout: 5000 });
  const tooltip = await page.textContent("#tooltip");
  check(tooltip === target.label && tooltip.startsWith("digit "), `tooltip said ${JSON.stringify(tooltip)}, expected ${target.label}`);

  // Cluster labels at the default zoom: some drawn, none overlapping another.
  const labels = await page.evaluate(() => window.__adminMap.drawnLabels);
  check(labels.length > 0, "no cluster labels drawn");
  const overlap = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
  check(!labels.some((a, i) => labels.some((b, j) => i < j && overlap(a.box, b.box))), `labels overlap: ${JSON.stringify(labels)}`);

  // Click a point: its true neighbours are listed, and exactly they are ringed.
  await page.mouse.click(box.x + target.position.x, box.y + target.position.y);
  await page.waitForFunction(() => document.querySelectorAll("#point-neighbors li").length === 10, null, { timeout: 15000 });
  const listed = await page.$$eval("#point-neighbors li", (items) => items.map((item) => Number(item.dataset.id)));
  const ringed = await page.evaluate(() => window.__adminMap.ringed);
  check(JSON.stringify(listed) === JSON.stringify(ringed), `listed ${listed}, ringed ${ringed}`);
  const overlapText = await page.textContent("#point-overlap");
  await page.waitForSelector("#point-attributes dt", { timeout: 5000 });
  const attributes = await page.$$eval("#point-attributes dt", (terms) => terms.map((term) => term.textContent));
  check(JSON.stringify(attributes) === JSON.stringify(["digit", "parity", "row"]), `attributes shown: ${attributes}`);
  check(/^\d+ of its 10 true neighbours are also among its 10 nearest on the map\.$/.test(overlapText), `said ${overlapText}`);
  // Density contours as a toggle, drawn over the points with the labels.
  await page.click("#contours");
  const contourSegments = await page.evaluate(() => window.__adminMap.contourSegments);
  check(contourSegments > 0, "no density contours drawn");
  await page.screenshot({ path: `${artifacts}/admin-explore.png` });
  await page.click("#contours");
  await page.click("#point-close");

  // Toggle a category off: the drawn count drops by that category's size.
  const threes = await page.evaluate(() => window.__adminMap.view.points.filter((p) => p.category === "3").length);
  await page.click('#legend button[data-category="3"]');
  const afterToggle = await page.evaluate(() => window.__adminMap.drawnPoints);
  check(threes > 0 && afterToggle === total - threes, `after hiding "3" drew ${afterToggle}, expected ${total - threes}`);
  check((await page.getAttribute('#legend button[data-category="3"]', "aria-pressed")) === "false", "legend button state");
  await page.click('#legend button[data-category="3"]');

  // Search a name: it is highlighted.
  await page.fill("#search", "#1796");
  await page.waitForFunction(() => window.__adminMap.highlighted === 1, null, { timeout: 5000 });
  const searchCount = await page.textContent("#search-count");

  // Density view and keyboard zoom still draw every point.
  await page.click("#density");
  await page.focus("#map");
  await page.keyboard.press("+");
  await page.waitForTimeout(100);
  await page.screenshot({ path: `${artifacts}/admin-density.png` });

  // A reload signs in from the session and downloads the map once more, once.
  mapCalls.length = 0;
  await page.reload();
  await page.waitForFunction(() => window.__adminMap.state === "ready" && window.__adminMap.drawnPoints > 0, null, { timeout: 30000 });
  await page.waitForTimeout(300);
  const reloadDownloads = mapCalls.filter((method) => !method.endsWith("(summary)")).length;
  check(reloadDownloads === 1, `after a reload the page downloaded the map ${reloadDownloads} times`);
  check(violations.length === 0, `CSP violations or page errors: ${violations.join(" | ")}`);

  console.log(JSON.stringify({ unauthorized, failedText, progressText, etaText, total, drawn, tooltip, threes, afterToggle, searchCount, csp, downloads, reloadDownloads, violations, labels: labels.length, listed, ringed, overlapText }));
} finally {
  await browser.close();
}
