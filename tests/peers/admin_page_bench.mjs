// Drawing figures for the admin page in the same headless Chromium the tests use: time from a
// READY map's points arriving to the first full draw, and frame time while panning, at 10k and
// 100k points (synthetic clustered points, so no map computation is needed), then the same pan
// with cluster labels (three levels) and density contours on.
//     node admin_page_bench.mjs http://127.0.0.1:8081/admin/
import { chromium } from "playwright-core";
import { launchOptions } from "./chromium.mjs";

const [pageUrl] = process.argv.slice(2);
const browser = await chromium.launch(launchOptions);
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  await page.goto(pageUrl);
  for (const n of [10_000, 100_000]) {
    const figures = await page.evaluate((n) => {
      document.getElementById("sign-in").hidden = true;
      document.getElementById("map-panel").hidden = false;
      const view = window.__adminMap.view;
      let seed = 7;
      const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
      const points = Array.from({ length: n }, (_, i) => {
        const cluster = i % 20;
        return {
          id: BigInt(i),
          x: Math.cos(cluster) * 50 + (random() - 0.5) * 20,
          y: Math.sin(cluster) * 50 + (random() - 0.5) * 20,
          name: `item ${i}`,
          category: String(cluster),
        };
      });
      view.setPoints([]); // no animation from the previous run's points
      const started = performance.now();
      view.setPoints(points); // draws once, synchronously
      const firstDraw = performance.now() - started;
      const frames = [];
      for (let step = 0; step < 60; step++) {
        const t = performance.now();
        view.pan(3, 2);
        view.draw();
        frames.push(performance.now() - t);
      }
      frames.sort((a, b) => a - b);
      // Labels of 12, 36 and 108 clusters, and contours, as a corpus's map has them.
      view.clusters = [12, 36, 108].flatMap((k, level) =>
        Array.from({ length: k }, (_, c) => ({
          level, x: Math.cos(c) * 50, y: Math.sin(c) * 50, size: n / k, label: `cluster ${level}.${c}: words, more`,
        })));
      view.showLabels = true;
      view.showContours = true;
      const decorated = [];
      for (let step = 0; step < 60; step++) {
        const t = performance.now();
        view.pan(-3, -2);
        view.draw();
        decorated.push(performance.now() - t);
      }
      decorated.sort((a, b) => a - b);
      const labels = view.drawnLabels.length;
      view.showContours = false;
      view.clusters = [];
      return { n, drawn: view.drawnPoints, firstDraw, panP50: frames[30], panP95: frames[57], decoratedP50: decorated[30], decoratedP95: decorated[57], labels };
    }, n);
    console.log(
      `${figures.n} points: first full draw ${figures.firstDraw.toFixed(1)} ms, ` +
        `pan frame p50 ${figures.panP50.toFixed(1)} ms, p95 ${figures.panP95.toFixed(1)} ms (${figures.drawn} drawn); ` +
        `with labels (${figures.labels} drawn) and contours p50 ${figures.decoratedP50.toFixed(1)} ms, p95 ${figures.decoratedP95.toFixed(1)} ms`,
    );
  }
} finally {
  await browser.close();
}
