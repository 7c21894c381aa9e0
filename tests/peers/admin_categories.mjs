// The admin page with many categories, in Debian's Chromium at 1280x900:
//     node admin_categories.mjs PAGE_URL ADMIN_TOKEN ARTIFACTS_DIR
// Prints one JSON line of what it saw: the legend's buttons and colours, where the map sits.
import { chromium } from "playwright-core";
import { launchOptions } from "./chromium.mjs";

const [pageUrl, token, artifacts] = process.argv.slice(2);
const browser = await chromium.launch(launchOptions);
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(pageUrl);
  await page.fill("#token", token);
  await page.click("#sign-in button[type=submit]");
  await page.waitForFunction(() => window.__adminMap.state === "ready" && window.__adminMap.drawnPoints > 0, null, { timeout: 120000 });
  const seen = await page.evaluate(() => {
    const buttons = [...document.querySelectorAll("#legend button")];
    const canvas = document.querySelector("#map").getBoundingClientRect();
    return {
      categories: window.__adminMap.view.categories.length,
      buttons: buttons.length,
      other: buttons.filter((b) => b.dataset.other).map((b) => b.textContent),
      colors: buttons.filter((b) => !b.dataset.other).map((b) => b.querySelector(".swatch").style.background),
      canvasTop: canvas.top,
      canvasBottom: canvas.bottom,
      placeholder: document.querySelector("#search").placeholder,
    };
  });
  // "Other" hides every grouped category at once.
  const before = await page.evaluate(() => window.__adminMap.drawnPoints);
  await page.click("#legend button[data-other]");
  const afterOther = await page.evaluate(() => window.__adminMap.drawnPoints);
  await page.screenshot({ path: `${artifacts}/admin-categories.png` });
  console.log(JSON.stringify({ ...seen, before, afterOther, errors }));
} finally {
  await browser.close();
}
