// The map on a canvas: points written straight into an ImageData buffer (no DOM node, no path
// per point), so 100k points draw in a few milliseconds. Hover uses a screen-space grid index
// rebuilt with each draw.

/** A cluster's label, at the zoom level it belongs to. */
export interface ClusterLabel {
  level: number;
  x: number;
  y: number;
  size: number;
  label: string;
}

/** A selected point and its true neighbours (indices into `points`). */
export interface Selection {
  index: number;
  neighbors: number[];
}

/** Points chosen by a lasso or a box: the polygon in map coordinates (as drawn, on the
 *  generation it was drawn on) and the ids inside it, which a refresh keeps by id. */
export interface Region {
  polygon: [number, number][];
  ids: Set<bigint>;
  /** The map the polygon was drawn on: its coordinates mean nothing on another. */
  generation: bigint;
}

/** Whether (x, y) is inside `polygon` by the even-odd rule, as the api-service decides it. */
export function insidePolygon(polygon: [number, number][], x: number, y: number): boolean {
  let inside = false;
  let [x1, y1] = polygon[polygon.length - 1];
  for (const [x2, y2] of polygon) {
    if ((y1 > y) !== (y2 > y) && x < x1 + ((y - y1) * (x2 - x1)) / (y2 - y1)) inside = !inside;
    [x1, y1] = [x2, y2];
  }
  return inside;
}

/** Colours from an item field other than the category: a text field's values as categories, or a
 *  numeric field on a continuous scale. `values` are in the order of the points. */
export type ColorField =
  | { field: string; numeric: false; values: (string | null)[] }
  | {
      field: string;
      numeric: true;
      values: (number | null)[];
      min: number;
      max: number;
      /** Values above `max` draw as the top colour (the scale ends at a percentile). */
      clipped?: boolean;
      /** How points without a value are named and drawn, if not grey. */
      missing?: { label: string; color: string };
    };

/** A continuous scale (viridis's ends and three stops between), dark for low values; the legend
 *  draws the same stops as a CSS gradient. */
export const SCALE = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];

/** The scale's colour at `t` in 0..1, as CSS. */
export function scaleColor(t: number): string {
  const at = Math.min(1, Math.max(0, t)) * (SCALE.length - 1);
  const i = Math.min(SCALE.length - 2, Math.floor(at));
  const [a, b] = [SCALE[i], SCALE[i + 1]].map((hex) => [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16)));
  const mix = a.map((v, k) => Math.round(v + (b[k] - v) * (at - i)));
  return `#${mix.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

export interface Point {
  id: bigint;
  x: number;
  y: number;
  name: string;
  category: string;
}

/** Distinct colours for the largest categories (no grey: grey is "other"). */
const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
  "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd",
];
/** Every category past the palette's size shares this colour and one legend entry. */
export const DISTINCT_CATEGORIES = PALETTE.length;
const OTHER_COLOR = "#a8a8a8";
const CELL = 8; // px, hover grid cell
const HOVER_RADIUS = 6; // px
/** How long a new version of the map takes to move in. */
const TRANSITION_MS = 700;
const LEAVING_COLOR = 0xff9e9e9e; // grey, for removed points whose category is gone

/** A new version of the map moving in: where each point starts (its old place, or its new place
 *  for an added point, which fades in) and the removed points, fading out where they were. */
interface Transition {
  from: Float32Array;
  added: Uint8Array;
  leaving: Point[];
  started: number;
}

const ease = (t: number) => 1 - (1 - t) ** 3;

/** `color` (0xAABBGGRR) mixed with white: `alpha` 0 is white, 1 the color. */
function fade(color: number, alpha: number): number {
  const mix = (shift: number) => Math.round(255 + (((color >> shift) & 0xff) - 255) * alpha) << shift;
  return (0xff << 24) | mix(16) | mix(8) | mix(0);
}

/** The colour of the category ranked `rank` by size (0 the largest). */
export function categoryColor(rank: number): string {
  return rank < PALETTE.length ? PALETTE[rank] : OTHER_COLOR;
}

function rgba(hex: string): number {
  const value = parseInt(hex.slice(1), 16);
  // ImageData is RGBA in memory; as a little-endian u32 that is 0xAABBGGRR.
  return (0xff << 24) | ((value & 0xff) << 16) | (value & 0xff00) | ((value >> 16) & 0xff);
}

export class MapView {
  points: Point[] = [];
  categories: string[] = [];
  hidden = new Set<string>();
  search = "";
  density = false;
  drawnPoints = 0;
  highlighted = 0;
  lastDrawMs = 0;
  clusters: ClusterLabel[] = [];
  showLabels = true;
  showContours = false;
  /** Contour segments drawn last (for tests). */
  contourSegments = 0;
  selection: Selection | null = null;
  /** Points chosen by a lasso or a box; the others are drawn dimmed. */
  region: Region | null = null;
  /** Colours by another item field than the category; null: by category. */
  colorBy: ColorField | null = null;
  /** A lasso or box being drawn, in CSS pixels. */
  drawing: [number, number][] | null = null;
  /** The labels drawn last, with their boxes in CSS pixels (for tests). */
  drawnLabels: { label: string; box: [number, number, number, number] }[] = [];
  /** Map versions moved in with an animation, and frames drawn mid-way (for tests). */
  transitions = 0;
  transitionFrames = 0;
  private transition: Transition | null = null;
  private categoryIndex = new Map<string, number>();
  private colors: number[] = [];
  private scale = 1;
  private offsetX = 0;
  private offsetY = 0;
  private bounds = { minX: 0, minY: 0, maxX: 1, maxY: 1 };
  /** The last draw's mapping from map coordinates to CSS pixels. */
  private origin = { x: 0, y: 0, fit: 1 };
  private grid = new Map<number, number[]>();
  private screen = new Float32Array(0);
  private frame = 0;

  constructor(private canvas: HTMLCanvasElement) {
    new ResizeObserver(() => this.requestDraw()).observe(canvas);
  }

  /** Shows `points`; with `keepView` (a new version of the map on screen) the zoom, pan and
   *  frame stay, so points that kept their place stay put on screen. */
  setPoints(points: Point[], keepView = false) {
    const keep = keepView && this.points.length > 0;
    // Indices change with the points: a selection does not carry over.
    this.selection = null;
    this.transition = this.points.length > 0 && !matchMedia("(prefers-reduced-motion: reduce)").matches
      ? this.transitionTo(points)
      : null;
    this.points = points;
    // A field's values are in the order of the points they came with: fetched again for these.
    this.colorBy = null;
    this.regroup();
    let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const p of points) {
      minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x);
      minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y);
    }
    if (keep) {
      this.draw();
      return;
    }
    this.bounds = points.length ? { minX, minY, maxX, maxY } : { minX: 0, minY: 0, maxX: 1, maxY: 1 };
    this.resetView();
  }

  /** Colours by `field` (null: by category); hidden values of another field no longer apply. */
  setColorBy(field: ColorField | null) {
    if (field?.field !== this.colorBy?.field) this.hidden = new Set();
    this.colorBy = field;
    this.regroup();
    this.requestDraw();
  }

  /** The value point `i` is grouped and coloured by: its category, or its value of a text field. */
  group(i: number): string {
    const field = this.colorBy;
    return field && !field.numeric ? (field.values[i] ?? "(none)") : this.points[i].category;
  }

  /** Groups by size, largest first: the largest get distinct colours, the rest share one. */
  private regroup() {
    const sizes = new Map<string, number>();
    if (!this.colorBy?.numeric) {
      for (let i = 0; i < this.points.length; i++) sizes.set(this.group(i), (sizes.get(this.group(i)) ?? 0) + 1);
    }
    this.categories = [...sizes.keys()].sort(
      (a, b) => sizes.get(b)! - sizes.get(a)! || a.localeCompare(b, undefined, { numeric: true }),
    );
    this.categoryIndex = new Map(this.categories.map((c, i) => [c, i]));
    this.colors = this.categories.map((_, i) => rgba(categoryColor(i)));
    this.hidden = new Set([...this.hidden].filter((c) => this.categoryIndex.has(c)));
  }

  /** Point `i`'s colour (0xAABBGGRR). */
  private colorOf(i: number): number {
    const field = this.colorBy;
    if (field?.numeric) {
      const value = field.values[i];
      if (value === null) return rgba(field.missing?.color ?? OTHER_COLOR);
      return rgba(scaleColor(field.max > field.min ? (value - field.min) / (field.max - field.min) : 0.5));
    }
    return this.colors[this.categoryIndex.get(this.group(i))!];
  }

  resetView() {
    this.scale = 1;
    this.offsetX = 0;
    this.offsetY = 0;
    this.draw();
  }

  /** Zoom and pan, to keep in a link. */
  get viewState(): { scale: number; x: number; y: number } {
    return { scale: this.scale, x: this.offsetX, y: this.offsetY };
  }

  set viewState(state: { scale: number; x: number; y: number }) {
    this.scale = Math.min(200, Math.max(0.2, state.scale));
    [this.offsetX, this.offsetY] = [state.x, state.y];
    this.requestDraw();
  }

  /** Map coordinates of a CSS pixel of the canvas, by the last draw's mapping. */
  toMap(sx: number, sy: number): [number, number] {
    return [(sx - this.origin.x) / this.origin.fit + this.bounds.minX, this.bounds.maxY - (sy - this.origin.y) / this.origin.fit];
  }

  /** Chooses the points inside `polygon` (map coordinates), hidden categories included: what
   *  is chosen is a place on the map, and the API answers the same polygon the same way. */
  selectRegion(polygon: [number, number][], generation: bigint) {
    const ids = new Set<bigint>();
    for (const p of this.points) if (insidePolygon(polygon, p.x, p.y)) ids.add(p.id);
    this.region = { polygon, ids, generation };
    this.requestDraw();
  }

  clearRegion() {
    this.region = null;
    this.drawing = null;
    this.requestDraw();
  }

  zoom(factor: number, cx: number, cy: number) {
    const next = Math.min(200, Math.max(0.2, this.scale * factor));
    const applied = next / this.scale;
    this.offsetX = cx - (cx - this.offsetX) * applied;
    this.offsetY = cy - (cy - this.offsetY) * applied;
    this.scale = next;
    this.requestDraw();
  }

  pan(dx: number, dy: number) {
    this.offsetX += dx;
    this.offsetY += dy;
    this.requestDraw();
  }

  get animating(): boolean {
    return this.transition !== null;
  }

  private transitionTo(points: Point[]): Transition {
    const before = new Map(this.points.map((p) => [p.id, p]));
    const from = new Float32Array(points.length * 2);
    const added = new Uint8Array(points.length);
    points.forEach((p, i) => {
      const old = before.get(p.id);
      from[2 * i] = old ? old.x : p.x;
      from[2 * i + 1] = old ? old.y : p.y;
      added[i] = old ? 0 : 1;
      before.delete(p.id);
    });
    this.transitions++;
    return { from, added, leaving: [...before.values()], started: performance.now() };
  }

  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  /** Screen (CSS pixel) position of a point, or null when it is not drawn. */
  screenPosition(id: bigint): { x: number; y: number } | null {
    const index = this.points.findIndex((p) => p.id === id);
    if (index < 0 || !this.isVisible(index)) return null;
    return { x: this.screen[2 * index], y: this.screen[2 * index + 1] };
  }

  /** The drawn point nearest to a screen position, within a few pixels (or `radius`). */
  pick(x: number, y: number, radius = HOVER_RADIUS): Point | null {
    if (!Number.isFinite(radius)) {
      // Any distance: every drawn point is a candidate.
      let best: Point | null = null;
      let bestDistance = Infinity;
      this.points.forEach((p, i) => {
        if (!this.isVisible(i)) return;
        const d = (this.screen[2 * i] - x) ** 2 + (this.screen[2 * i + 1] - y) ** 2;
        if (d < bestDistance) [best, bestDistance] = [p, d];
      });
      return best;
    }
    let best: Point | null = null;
    let bestDistance = radius * radius;
    const [gx, gy] = [Math.floor(x / CELL), Math.floor(y / CELL)];
    for (let dx = -1; dx <= 1; dx++) {
      for (let dy = -1; dy <= 1; dy++) {
        for (const index of this.grid.get((gx + dx) * 65536 + (gy + dy)) ?? []) {
          const d = (this.screen[2 * index] - x) ** 2 + (this.screen[2 * index + 1] - y) ** 2;
          if (d <= bestDistance) {
            bestDistance = d;
            best = this.points[index];
          }
        }
      }
    }
    return best;
  }

  /** Whether point `i` is drawn: its group not hidden (a numeric field hides nothing). */
  private isVisible(i: number): boolean {
    return this.colorBy?.numeric === true || !this.hidden.has(this.group(i));
  }

  private matches(p: Point): boolean {
    return this.search.length > 0 && p.name.toLowerCase().includes(this.search);
  }

  draw() {
    const started = performance.now();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    const context = this.canvas.getContext("2d")!;
    const image = context.createImageData(width, height);
    const pixels = new Uint32Array(image.data.buffer);
    pixels.fill(0xffffffff);

    // Fit the map's bounds into the canvas with a margin, then apply zoom and pan.
    const cssWidth = width / ratio;
    const cssHeight = height / ratio;
    const spanX = this.bounds.maxX - this.bounds.minX || 1;
    const spanY = this.bounds.maxY - this.bounds.minY || 1;
    const fit = Math.min((cssWidth - 20) / spanX, (cssHeight - 20) / spanY) * this.scale;
    const originX = (cssWidth - spanX * fit) / 2 + this.offsetX * 1;
    const originY = (cssHeight - spanY * fit) / 2 + this.offsetY * 1;

    this.screen = new Float32Array(this.points.length * 2);
    this.grid = new Map();
    const densityCells = this.density ? new Float32Array(Math.ceil(width / 4) * Math.ceil(height / 4)) : null;
    const matches: number[] = [];
    let drawn = 0;
    // Mid-transition: each point between its old place and its new one, added ones fading in.
    const transition = this.transition;
    const progress = transition ? ease(Math.min(1, (performance.now() - transition.started) / TRANSITION_MS)) : 1;
    this.origin = { x: originX, y: originY, fit };
    const toScreen = (x: number, y: number) => [originX + (x - this.bounds.minX) * fit, originY + (this.bounds.maxY - y) * fit];
    const region = this.region;
    if (transition && progress < 1) {
      for (const p of transition.leaving) {
        // A removed point has no value of the field shown: its category, or grey.
        if (!this.colorBy && this.hidden.has(p.category)) continue;
        const [sx, sy] = toScreen(p.x, p.y);
        const index = this.colorBy ? undefined : this.categoryIndex.get(p.category);
        this.plot(pixels, width, height, sx * ratio, sy * ratio, fade(index === undefined ? LEAVING_COLOR : this.colors[index], 1 - progress));
      }
    }
    for (let i = 0; i < this.points.length; i++) {
      const p = this.points[i];
      const [x, y] = transition && progress < 1
        ? [transition.from[2 * i] + (p.x - transition.from[2 * i]) * progress, transition.from[2 * i + 1] + (p.y - transition.from[2 * i + 1]) * progress]
        : [p.x, p.y];
      const [sx, sy] = toScreen(x, y);
      this.screen[2 * i] = sx;
      this.screen[2 * i + 1] = sy;
      if (!this.isVisible(i)) continue;
      drawn++;
      const key = Math.floor(sx / CELL) * 65536 + Math.floor(sy / CELL);
      const bucket = this.grid.get(key);
      if (bucket) bucket.push(i); else this.grid.set(key, [i]);
      if (this.matches(p)) matches.push(i);
      const px = Math.round(sx * ratio);
      const py = Math.round(sy * ratio);
      if (px < 0 || py < 0 || px >= width - 1 || py >= height - 1) continue;
      if (densityCells) {
        densityCells[(py >> 2) * Math.ceil(width / 4) + (px >> 2)] += 1;
        continue;
      }
      const base = this.colorOf(i);
      // Outside a region: dimmed, not hidden, so the selection stays in its context.
      const color = region && !region.ids.has(p.id) ? fade(base, 0.18) : base;
      this.plot(pixels, width, height, px, py, transition && progress < 1 && transition.added[i] ? fade(color, progress) : color);
    }
    if (transition && progress < 1) {
      this.transitionFrames++;
      this.requestDraw();
    } else this.transition = null;
    if (densityCells) this.paintDensity(pixels, densityCells, width, height);
    context.putImageData(image, 0, 0);

    // Search hits on top, as rings large enough to find.
    context.save();
    context.scale(ratio, ratio);
    context.strokeStyle = "#000";
    context.lineWidth = 2;
    for (const i of matches) {
      context.beginPath();
      context.arc(this.screen[2 * i], this.screen[2 * i + 1], 6, 0, 2 * Math.PI);
      context.stroke();
    }
    if (this.showContours) this.drawContours(context, cssWidth, cssHeight);
    this.drawSelection(context);
    this.drawRegion(context, toScreen);
    this.drawLabels(context, cssWidth, cssHeight, toScreen);
    context.restore();

    this.drawnPoints = drawn;
    this.highlighted = matches.length;
    this.lastDrawMs = performance.now() - started;
  }

  /** Density contours: the drawn points counted on a coarse grid, smoothed, and lines traced
   *  (marching squares) where the density crosses a quarter, a half and three quarters of its
   *  peak on a log scale. */
  private drawContours(context: CanvasRenderingContext2D, width: number, height: number) {
    const cell = 8;
    const columns = Math.ceil(width / cell) + 1;
    const rows = Math.ceil(height / cell) + 1;
    const counts = new Float32Array(columns * rows);
    this.points.forEach((_, i) => {
      if (!this.isVisible(i)) return;
      const [x, y] = [this.screen[2 * i] / cell, this.screen[2 * i + 1] / cell];
      if (x < 0 || y < 0 || x >= columns - 1 || y >= rows - 1) return;
      counts[Math.floor(y) * columns + Math.floor(x)] += 1;
    });
    // A 3x3 box blur, twice: contours of points, not of pixels.
    let grid = counts;
    for (let pass = 0; pass < 2; pass++) {
      const next = new Float32Array(grid.length);
      for (let y = 1; y < rows - 1; y++) {
        for (let x = 1; x < columns - 1; x++) {
          let sum = 0;
          for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) sum += grid[(y + dy) * columns + x + dx];
          next[y * columns + x] = sum / 9;
        }
      }
      grid = next;
    }
    let peak = 0;
    for (const v of grid) peak = Math.max(peak, v);
    this.contourSegments = 0;
    if (peak === 0) return;
    const logPeak = Math.log1p(peak);
    context.lineWidth = 1.2;
    context.strokeStyle = "rgba(40, 40, 90, 0.6)";
    context.beginPath();
    for (const share of [0.25, 0.5, 0.75]) {
      const level = Math.expm1(share * logPeak);
      for (let y = 0; y < rows - 1; y++) {
        for (let x = 0; x < columns - 1; x++) {
          const corners = [grid[y * columns + x], grid[y * columns + x + 1], grid[(y + 1) * columns + x + 1], grid[(y + 1) * columns + x]];
          const inside = corners.map((v) => v >= level);
          const crossings: [number, number][] = [];
          // Each edge the level crosses, at the interpolated point.
          const edges: [number, number, number, number, number, number][] = [
            [0, 1, x, y, 1, 0], [1, 2, x + 1, y, 0, 1], [3, 2, x, y + 1, 1, 0], [0, 3, x, y, 0, 1],
          ];
          for (const [a, b, ex, ey, dx, dy] of edges) {
            if (inside[a] === inside[b]) continue;
            const t = (level - corners[a]) / (corners[b] - corners[a]);
            crossings.push([(ex + dx * t) * cell, (ey + dy * t) * cell]);
          }
          for (let k = 0; k + 1 < crossings.length; k += 2) {
            context.moveTo(crossings[k][0], crossings[k][1]);
            context.lineTo(crossings[k + 1][0], crossings[k + 1][1]);
            this.contourSegments++;
          }
        }
      }
    }
    context.stroke();
  }

  /** The selected point's true neighbours: a line from the point to each, and a ring on each. */
  private drawSelection(context: CanvasRenderingContext2D) {
    const selection = this.selection;
    if (!selection) return;
    const [px, py] = [this.screen[2 * selection.index], this.screen[2 * selection.index + 1]];
    context.strokeStyle = "rgba(200, 30, 30, 0.55)";
    context.lineWidth = 1;
    for (const i of selection.neighbors) {
      context.beginPath();
      context.moveTo(px, py);
      context.lineTo(this.screen[2 * i], this.screen[2 * i + 1]);
      context.stroke();
    }
    context.strokeStyle = "#c81e1e";
    context.lineWidth = 2;
    for (const i of selection.neighbors) {
      context.beginPath();
      context.arc(this.screen[2 * i], this.screen[2 * i + 1], 5, 0, 2 * Math.PI);
      context.stroke();
    }
    context.fillStyle = "#c81e1e";
    context.beginPath();
    context.arc(px, py, 4, 0, 2 * Math.PI);
    context.fill();
  }

  /** The region's outline (dashed) and a lasso or box being drawn. */
  private drawRegion(context: CanvasRenderingContext2D, toScreen: (x: number, y: number) => number[]) {
    const outline = (points: number[][], dash: number[]) => {
      if (points.length < 2) return;
      context.setLineDash(dash);
      context.beginPath();
      points.forEach(([x, y], i) => (i === 0 ? context.moveTo(x, y) : context.lineTo(x, y)));
      context.closePath();
      context.stroke();
      context.setLineDash([]);
    };
    context.strokeStyle = "#222";
    context.lineWidth = 1.5;
    if (this.region) outline(this.region.polygon.map(([x, y]) => toScreen(x, y)), [6, 4]);
    if (this.drawing) outline(this.drawing, []);
  }

  /** The level of clusters this zoom shows: coarse when zoomed out, finer as it zooms in. */
  labelLevel(): number {
    return this.scale < 2.5 ? 0 : this.scale < 7 ? 1 : 2;
  }

  /** Cluster labels of the zoom's level, largest clusters first, each drawn only where it
   *  overlaps no label already drawn and fits on the canvas. */
  private drawLabels(
    context: CanvasRenderingContext2D,
    width: number,
    height: number,
    toScreen: (x: number, y: number) => number[],
  ) {
    this.drawnLabels = [];
    if (!this.showLabels) return;
    const level = this.labelLevel();
    const candidates = this.clusters.filter((c) => c.level === level && c.size > 0).sort((a, b) => b.size - a.size);
    context.font = "600 13px system-ui, sans-serif";
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.lineWidth = 4;
    context.strokeStyle = "rgba(255, 255, 255, 0.9)";
    context.fillStyle = "#1a1a1a";
    const boxes: [number, number, number, number][] = [];
    for (const cluster of candidates) {
      const [x, y] = toScreen(cluster.x, cluster.y);
      const text = cluster.label.length > 40 ? `${cluster.label.slice(0, 39)}…` : cluster.label;
      const w = context.measureText(text).width + 6;
      const box: [number, number, number, number] = [x - w / 2, y - 10, x + w / 2, y + 10];
      if (box[0] < 0 || box[1] < 0 || box[2] > width || box[3] > height) continue;
      if (boxes.some((b) => b[0] < box[2] && box[0] < b[2] && b[1] < box[3] && box[1] < b[3])) continue;
      boxes.push(box);
      context.strokeText(text, x, y);
      context.fillText(text, x, y);
      this.drawnLabels.push({ label: text, box });
    }
  }

  /** Indices of the `k` points nearest point `index` on the map (the picture's neighbours). */
  mapNeighbors(index: number, k: number): number[] {
    const p = this.points[index];
    const nearest: [number, number][] = [];
    this.points.forEach((q, i) => {
      if (i === index) return;
      const d = (q.x - p.x) ** 2 + (q.y - p.y) ** 2;
      if (nearest.length < k || d < nearest[nearest.length - 1][0]) {
        nearest.push([d, i]);
        nearest.sort((a, b) => a[0] - b[0]);
        if (nearest.length > k) nearest.pop();
      }
    });
    return nearest.map(([, i]) => i);
  }

  /** The index of the point with this id, or -1. */
  indexOf(id: bigint): number {
    return this.points.findIndex((p) => p.id === id);
  }

  /** A 2x2 dot at device pixel (`px`, `py`), if it is on the canvas. */
  private plot(pixels: Uint32Array, width: number, height: number, px: number, py: number, color: number) {
    px = Math.round(px);
    py = Math.round(py);
    if (px < 0 || py < 0 || px >= width - 1 || py >= height - 1) return;
    const at = py * width + px;
    pixels[at] = color; pixels[at + 1] = color;
    pixels[at + width] = color; pixels[at + width + 1] = color;
  }

  private paintDensity(pixels: Uint32Array, cells: Float32Array, width: number, height: number) {
    const columns = Math.ceil(width / 4);
    let max = 0;
    for (const c of cells) max = Math.max(max, c);
    if (max === 0) return;
    const logMax = Math.log1p(max);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const c = cells[(y >> 2) * columns + (x >> 2)];
        if (c === 0) continue;
        const t = Math.log1p(c) / logMax; // 0..1, white -> orange -> dark red
        const r = 255 - Math.round(t * 100);
        const g = Math.round(235 * (1 - t));
        const b = Math.round(200 * (1 - t) ** 2);
        pixels[y * width + x] = (0xff << 24) | (b << 16) | (g << 8) | r;
      }
    }
  }
}
