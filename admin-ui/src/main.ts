// The admin page: signs in with the admin token (kept for this browser session only), follows
// the map over gRPC-web (WatchEmbeddingMap, no polling loop), and draws it when ready.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AdminMapService, AdminNeighborService, type AdminMapStatus } from "./gen/embeddingmap/api/v1/api_pb";
import { MapState, Phase, RefreshOutcome_Result, type PreviousMap } from "./gen/embeddingmap/v1/embedding_map_pb";
import { compare, type Comparison } from "./compare";
import { DISTINCT_CATEGORIES, MapView, SCALE, categoryColor, type ColorField, type Point } from "./map_view";
import { readFragment, writeFragment } from "./view_link";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const TOKEN_KEY = "embedding-map-admin-token";
const RECHECK_MS = 5000;

const view = new MapView($<HTMLCanvasElement>("map"));
/** How many true neighbours the panel lists and rings. */
const NEIGHBORS = 10;
let shownKey = "";
/** The item's attributes, from the api-service's JSON API on this origin; set once signed in. */
let itemAttributes: ((id: bigint) => Promise<Record<string, string> | null>) | null = null;
/** Downloads the CSV export of `polygon`'s points (every point without one); set once signed in. */
let exportCsv: ((polygon: [number, number][] | null) => Promise<void>) | null = null;
/** Fetches the item fields to colour by, and one field's values on the map shown; set once signed in. */
let fieldNames: (() => Promise<string[]>) | null = null;
let fieldColumn: ((field: string) => Promise<ColorField>) | null = null;
/** Most distinct values of a text field the map colours by. */
const MAX_COLOR_GROUPS = 200;
/** The field chosen to colour by; empty: the category. */
let colorField = "";
/** Whether points are coloured by how far they moved since the previous map (over the field). */
let comparing = false;
/** The comparison drawn, while comparing. */
let compared: Comparison | null = null;
/** Fetches the positions of the map a generation refreshed; set once signed in. */
let previousMap: ((generation: bigint) => Promise<PreviousMap>) | null = null;
/** What a lasso or box drag does: nothing (drag pans), or draw the shape. */
let tool: "pan" | "lasso" | "box" = "pan";
/** Files downloaded by the export buttons (for tests). */
let exports = 0;
/** Finds a point's true neighbours; set once signed in. */
let findNeighbors:
  | ((id: bigint) => Promise<{ generation: bigint; neighbors: { id: bigint; similarity: number; name?: string; category?: string }[] }>)
  | null = null;
let shownGeneration = 0n;
let session = 0;

// For tests and benchmarks: the page's own account of what it drew.
(window as any).__adminMap = {
  get state() { return document.body.dataset.state; },
  get totalPoints() { return view.points.length; },
  get drawnPoints() { return view.drawnPoints; },
  get highlighted() { return view.highlighted; },
  get generation() { return shownGeneration; },
  get transitions() { return view.transitions; },
  get animating() { return view.animating; },
  get transitionFrames() { return view.transitionFrames; },
  get ringed() { return view.selection?.neighbors.map((i) => Number(view.points[i].id)) ?? []; },
  get drawnLabels() { return view.drawnLabels; },
  get contourSegments() { return view.contourSegments; },
  get lastDrawMs() { return view.lastDrawMs; },
  get regionIds() { return [...(view.region?.ids ?? [])].map(Number).sort((a, b) => a - b); },
  get regionPolygon() { return view.region?.polygon ?? null; },
  get exports() { return exports; },
  get colorBy() { return view.colorBy ? { field: view.colorBy.field, numeric: view.colorBy.numeric } : null; },
  get legend() { return document.querySelector("#legend")!.textContent; },
  get comparing() { return comparing; },
  get compared() { return compared && { added: compared.added, removed: compared.removed, field: compared.color.field }; },
  /** The points the comparison marks as added. */
  get addedIds() {
    const values = compared?.color.values ?? [];
    return view.points.filter((_, i) => values[i] === null).map((p) => Number(p.id)).sort((a, b) => a - b);
  },
  screenPosition: (id: number) => view.screenPosition(BigInt(id)),
  view,
};

async function grpcWebUrl(): Promise<string> {
  const response = await fetch("config.json");
  const config = await response.json();
  // The api-service serves the admin map service as gRPC-web on the page's own origin.
  return config.grpc_web_url || location.origin;
}

function setState(state: string) {
  document.body.dataset.state = state;
}

function showStatus(title: string, detail = "", progress?: number) {
  $("status").hidden = false;
  $("status-title").textContent = title;
  $("status-detail").textContent = detail;
  const bar = $<HTMLProgressElement>("status-progress");
  bar.hidden = progress === undefined;
  if (progress !== undefined) bar.value = progress;
}

function showSignIn(message = "") {
  session++;
  setState(message ? "unauthenticated" : "signed-out");
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("status").hidden = true;
  $("map-panel").hidden = true;
  $("sign-in-error").textContent = message;
  $<HTMLInputElement>("token").focus();
}

const phaseNames: Record<number, string> = {
  [Phase.LOADING]: "loading the corpus",
  [Phase.NORMALIZING]: "normalising vectors",
  [Phase.PCA]: "reducing dimensions (PCA)",
  [Phase.NEAREST_NEIGHBORS]: "finding nearest neighbours",
  [Phase.AFFINITIES]: "computing affinities",
  [Phase.OPTIMIZING]: "optimising the layout",
};

// Estimate of time left from the optimisation's observed pace.
let paceStart: { iteration: number; seconds: number } | null = null;

function showComputing(status: AdminMapStatus) {
  setState("computing");
  const p = status.progress;
  if (!p) return showStatus("Computing the map…");
  const seconds = Number(p.elapsed?.seconds ?? 0n) + (p.elapsed?.nanos ?? 0) / 1e9;
  let detail = `${phaseNames[p.phase] ?? "starting"} · ${p.pointCount} points · ${seconds.toFixed(1)} s elapsed`;
  let fraction: number | undefined;
  if (p.phase === Phase.OPTIMIZING && p.totalIterations > 0) {
    fraction = p.iteration / p.totalIterations;
    detail = `Iteration ${p.iteration} of ${p.totalIterations} · ${detail}`;
    if (!paceStart) paceStart = { iteration: p.iteration, seconds };
    const done = p.iteration - paceStart.iteration;
    if (done > 0 && seconds > paceStart.seconds) {
      const left = ((p.totalIterations - p.iteration) * (seconds - paceStart.seconds)) / done;
      detail += ` · about ${Math.ceil(left)} s left`;
    }
  }
  showStatus("Computing the map…", detail, fraction);
}

/** One map version: a new key means new points to fetch. */
function mapKey(status: AdminMapStatus): string {
  return `${status.generation}:${status.corpusFingerprint}:${status.computedAt?.seconds}:${status.computedAt?.nanos}`;
}

/** The line beside the map about refreshes: one under way, or the last one having failed. */
function showRefresh(status: AdminMapStatus) {
  const line = $("map-refresh");
  const refresh = status.refresh;
  const failure = status.lastRefresh?.result === RefreshOutcome_Result.FAILED ? status.lastRefresh.failure : undefined;
  line.classList.toggle("error", !refresh && failure !== undefined);
  if (refresh) {
    const phase = Phase[refresh.phase]?.toLowerCase().replace(/_/g, " ") ?? "working";
    line.textContent = refresh.phase === Phase.OPTIMIZING
      ? `updating: ${phase}, iteration ${refresh.iteration} of ${refresh.totalIterations}`
      : `updating: ${phase}`;
  } else {
    line.textContent = failure ? `The last update failed (${failure.message}); this is the previous map.` : "";
  }
}

function showReady(status: AdminMapStatus) {
  paceStart = null;
  const key = mapKey(status);
  setState("ready");
  $("status").hidden = true;
  $("map-panel").hidden = false;
  $("map-summary").textContent = `${status.count} points · map ${status.generation}`;
  view.clusters = status.clusters.map((c) => ({ level: c.level, x: c.x, y: c.y, size: Number(c.size), label: c.label }));
  showRefresh(status);
  if (key === shownKey && status.points.length === 0) return;
  // A new version of a map already on screen keeps the hidden categories and search, and, when
  // it was laid out from the one on screen (points kept their places), the zoom and pan too.
  const replacing = shownKey !== "" && status.layout === "incremental";
  shownKey = key;
  shownGeneration = status.generation;
  const points: Point[] = status.points.map((p) => ({ id: p.id, x: p.x, y: p.y, name: p.name, category: p.category || "(none)" }));
  // Only a map laid out from the previous one compares with it (a first map has none).
  $<HTMLButtonElement>("compare").disabled = status.layout !== "incremental";
  const first = view.points.length === 0;
  view.setPoints(points, replacing);
  closePanel();
  if (first) applyFragment();
  renderLegend();
  updateSearchCount();
  showRegion();
  // A field's values and a comparison are per map: fetched again for a new one.
  compared = null;
  if (comparing) void showComparison();
  else if (colorField) void chooseColor(colorField);
}

/** Turns the comparison with the previous map on or off (off: the chosen field's colours). */
function setComparing(on: boolean) {
  const was = comparing;
  comparing = on && !$<HTMLButtonElement>("compare").disabled;
  $("compare").setAttribute("aria-pressed", String(comparing));
  if (comparing) {
    // Colouring by distance hides nothing; what was hidden comes back when the comparison ends.
    if (!was) hiddenBeforeComparing = new Set(view.hidden);
    void showComparison();
  } else {
    compared = null;
    const hidden = was ? hiddenBeforeComparing : null;
    void chooseColor(colorField).then(() => {
      if (!hidden || comparing) return;
      view.hidden = new Set([...hidden].filter((group) => view.categories.includes(group)));
      renderLegend();
      view.requestDraw();
      updateSearchCount();
      saveFragment();
    });
  }
}

/** The groups hidden when the comparison began, shown again as hidden when it ends. */
let hiddenBeforeComparing = new Set<string>();

/** Colours the points by how far they moved since the previous map, added ones marked. */
async function showComparison() {
  const generation = shownGeneration;
  try {
    const previous = await previousMap!(generation);
    // Turned off, or a new map has come since: this answer is not for the view shown.
    if (!comparing || shownGeneration !== generation) return;
    compared = compare(view.points, previous.points, previous.previousGeneration);
    view.setColorBy(compared.color);
  } catch (error) {
    if (shownGeneration !== generation) return;
    setComparing(false);
    showStatus("Compare", `The previous map could not be loaded: ${ConnectError.from(error).rawMessage}`);
  }
  renderLegend();
  saveFragment();
}

/** Colours the points by `field` (empty: the category), fetching its values for the map shown. */
async function chooseColor(field: string) {
  colorField = field;
  $<HTMLSelectElement>("color-by").value = field;
  if (!field) view.setColorBy(null);
  else {
    const generation = shownGeneration;
    try {
      const column = await fieldColumn!(field);
      // A later choice, a new map or the comparison has come since: this answer is not for the view shown.
      if (colorField !== field || shownGeneration !== generation || comparing) return;
      view.setColorBy(column);
    } catch (error) {
      colorField = "";
      $<HTMLSelectElement>("color-by").value = "";
      view.setColorBy(null);
      showStatus("Colour", `The field ${field} could not be loaded: ${(error as Error).message}`);
    }
  }
  renderLegend();
  saveFragment();
}

/** A link's view (the URL fragment, never the query string, which reaches server logs): zoom,
 *  pan, hidden categories, search and the selection's polygon, applied to the first map. */
function applyFragment() {
  const link = readFragment(location.hash);
  if (!link) return;
  if (link.view) view.viewState = link.view;
  view.hidden = new Set(link.hidden);
  view.search = link.search;
  $<HTMLInputElement>("search").value = link.search;
  if (link.polygon) view.selectRegion(link.polygon, shownGeneration);
  if (link.compare) setComparing(true);
  // After the field's values arrive; its hidden values then apply to them.
  if (link.color) void chooseColor(link.color).then(() => {
    view.hidden = new Set(link.hidden);
    renderLegend();
    view.requestDraw();
    saveFragment();
  });
}

/** Keeps the fragment in step with the view, so the address bar is always a link to it. */
function saveFragment() {
  if (view.points.length === 0) return;
  const hash = writeFragment({
    view: view.viewState,
    hidden: [...view.hidden],
    search: view.search,
    color: colorField,
    polygon: view.region?.polygon ?? null,
    compare: comparing,
  });
  history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
}

/** The selection's panel: its size, its categories, the first 20 names by id. */
function showRegion() {
  const region = view.region;
  $("selection-panel").hidden = !region;
  saveFragment();
  if (!region) return;
  const chosen = view.points.filter((p) => region.ids.has(p.id));
  const stale = region.generation !== shownGeneration
    ? ` (drawn on map ${region.generation}; draw it again to export this map's points)`
    : "";
  $("selection-count").textContent = `${chosen.length} point${chosen.length === 1 ? "" : "s"} selected${stale}`;
  const byCategory = new Map<string, number>();
  for (const p of chosen) byCategory.set(p.category, (byCategory.get(p.category) ?? 0) + 1);
  const ranked = [...byCategory].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0], undefined, { numeric: true }));
  $("selection-categories").replaceChildren(
    ...ranked.slice(0, 10).map(([category, count]) => {
      const item = document.createElement("li");
      item.textContent = `${category}: ${count}`;
      return item;
    }),
  );
  const first = [...chosen].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).slice(0, 20);
  $("selection-names").replaceChildren(
    ...first.map((p) => {
      const item = document.createElement("li");
      item.textContent = `${p.name || "(no item)"} · #${p.id}`;
      return item;
    }),
  );
}

function clearRegion() {
  view.clearRegion();
  setTool("pan");
  showRegion();
}

function setTool(next: "pan" | "lasso" | "box") {
  tool = tool === next ? "pan" : next;
  $("tool-lasso").setAttribute("aria-pressed", String(tool === "lasso"));
  $("tool-box").setAttribute("aria-pressed", String(tool === "box"));
  $("map").dataset.tool = tool;
}

/** Every `step`-th vertex of a long lasso, so the polygon (and a link holding it) stays short. */
function simplify(points: [number, number][], most = 200): [number, number][] {
  const step = Math.ceil(points.length / most);
  return step <= 1 ? points : points.filter((_, i) => i % step === 0);
}

function closePanel() {
  selecting++;
  view.selection = null;
  $("point-panel").hidden = true;
  view.requestDraw();
}

/** Shows a point's true neighbours: listed with their similarity, ringed on the map with lines to
 *  the point, and how many of them the map also draws nearest to it. */
let selecting = 0;
async function selectPoint(index: number) {
  if (!findNeighbors || index < 0) return;
  // Answers to an earlier click, or after the panel closed, are dropped.
  const mine = ++selecting;
  const current = () => mine === selecting && !$("point-panel").hidden && view.points[index] === point;
  const point = view.points[index];
  $("point-panel").hidden = false;
  $("point-name").textContent = point.name || `#${point.id}`;
  $("point-category").textContent = `${point.category} · id ${point.id}`;
  $("point-overlap").textContent = "Finding its true neighbours…";
  $("point-neighbors").replaceChildren();
  $("point-attributes").replaceChildren();
  void itemAttributes?.(point.id).then((attributes) => {
    if (!current() || !attributes) return;
    $("point-attributes").replaceChildren(
      ...Object.entries(attributes).flatMap(([key, value]) => {
        const [term, detail] = [document.createElement("dt"), document.createElement("dd")];
        term.textContent = key;
        detail.textContent = value;
        return [term, detail];
      }),
    );
  }, () => {});
  let answer;
  try {
    answer = await findNeighbors(point.id);
  } catch (error) {
    if (current()) $("point-overlap").textContent = `The neighbours could not be found: ${ConnectError.from(error).rawMessage}`;
    return;
  }
  if (!current()) return;
  if (answer.generation !== shownGeneration) {
    $("point-overlap").textContent = "The map changed while its neighbours were being found; click the point again.";
    return;
  }
  const found = answer.neighbors;
  const neighbors = found.map((n) => view.indexOf(n.id)).filter((i) => i >= 0);
  view.selection = { index, neighbors };
  const onMap = new Set(view.mapNeighbors(index, found.length));
  const shared = neighbors.filter((i) => onMap.has(i)).length;
  $("point-overlap").textContent =
    `${shared} of its ${found.length} true neighbours are also among its ${found.length} nearest on the map.`;
  $("point-neighbors").replaceChildren(
    ...found.map((n) => {
      const item = document.createElement("li");
      item.dataset.id = String(n.id);
      item.textContent = `${n.name ?? `#${n.id} (no item)`} · ${n.category ?? "no category"} · ${n.similarity.toFixed(3)}`;
      return item;
    }),
  );
  view.requestDraw();
}

/** One button per category with a colour of its own (in name order), and one for the rest:
 *  the legend stays a line or two, so the map stays in view whatever the corpus. */
function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  const field = view.colorBy;
  if (field?.numeric) {
    // A numeric field: its scale from the lowest value to the highest.
    const scale = document.createElement("span");
    scale.className = "scale";
    const bar = document.createElement("span");
    bar.className = "gradient";
    bar.style.background = `linear-gradient(to right, ${SCALE.join(", ")})`;
    const low = document.createElement("span");
    low.textContent = shortNumber(field.min);
    const high = document.createElement("span");
    high.textContent = `${field.clipped ? "≥ " : ""}${shortNumber(field.max)}`;
    scale.append(`${field.field}:`, low, bar, high);
    legend.append(scale);
    if (field.missing) {
      // The points without a value, in their own colour: under a comparison, the added ones.
      const missing = document.createElement("span");
      missing.className = "missing";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = field.missing.color;
      const count = field.values.filter((v) => v === null).length;
      missing.append(swatch, `${field.missing.label}: ${count}`);
      legend.append(missing);
    }
    if (compared) {
      const removed = document.createElement("span");
      removed.className = "missing";
      removed.textContent = `removed: ${compared.removed}`;
      legend.append(removed);
    }
    return;
  }
  const button = (label: string, color: string, categories: string[]) => {
    const element = document.createElement("button");
    element.type = "button";
    if (categories.length === 1) element.dataset.category = categories[0];
    const shown = () => categories.some((c) => !view.hidden.has(c));
    // "mixed" when some of a group are hidden and some shown; a click then hides them all.
    const state = () => (!shown() ? "false" : categories.every((c) => !view.hidden.has(c)) ? "true" : "mixed");
    element.setAttribute("aria-pressed", state());
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    element.append(swatch, label);
    element.addEventListener("click", () => {
      const hide = shown();
      for (const c of categories) if (hide) view.hidden.add(c); else view.hidden.delete(c);
      element.setAttribute("aria-pressed", state());
      view.draw();
      updateSearchCount();
      saveFragment();
    });
    return element;
  };
  const distinct = view.categories.slice(0, DISTINCT_CATEGORIES);
  const byName = [...distinct].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  legend.append(...byName.map((c) => button(c, categoryColor(view.categories.indexOf(c)), [c])));
  const rest = view.categories.slice(DISTINCT_CATEGORIES);
  if (rest.length > 0) {
    const other = button(`Other (${rest.length} categories)`, categoryColor(DISTINCT_CATEGORIES), rest);
    other.dataset.other = "true";
    other.title = rest.join(", ");
    legend.append(other);
  }
}

/** A legend number: integers whole, others to four significant digits. */
function shortNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : String(+value.toPrecision(4));
}

function updateSearchCount() {
  $("search-count").textContent = view.search ? `${view.highlighted} match${view.highlighted === 1 ? "" : "es"}` : "";
}

/** Follows the map until sign-out: watch, and after each stream ends look again for a new map. */
async function follow(token: string, baseUrl: string) {
  const mine = ++session;
  const transport = createGrpcWebTransport({ baseUrl });
  const client = createClient(AdminMapService, transport);
  const headers = { authorization: `Bearer ${token}` };
  const neighborClient = createClient(AdminNeighborService, transport);
  itemAttributes = async (id) => {
    const response = await fetch(`/api/admin/items/${id}`, { headers });
    return response.ok ? (await response.json()).attributes : null;
  };
  findNeighbors = (id) => neighborClient.findNeighbors({ query: { case: "id", value: id }, k: NEIGHBORS }, { headers });
  previousMap = (generation) => client.getPreviousMap({ generation }, { headers });
  // Fetched with the token in a header and saved from memory: a link carrying the token would
  // end up in history and logs.
  fieldNames = async () => {
    const response = await fetch("/api/admin/embedding-map/fields", { headers });
    return response.ok ? (await response.json()).fields : [];
  };
  fieldColumn = async (field) => {
    const query = `generation=${Number(shownGeneration)}`;
    const response = await fetch(`/api/admin/embedding-map/fields/${encodeURIComponent(field)}?${query}`, { headers });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer?.error?.message ?? `${response.status}`);
    if (answer.numeric) return { field, numeric: true, values: answer.values, min: answer.min ?? 0, max: answer.max ?? 0 };
    // A text field of many values (a description, say) would be a legend nobody can read.
    const distinct = new Set(answer.values).size;
    if (distinct > MAX_COLOR_GROUPS) throw new Error(`it has ${distinct} different values; at most ${MAX_COLOR_GROUPS} can be told apart`);
    return { field, numeric: false, values: answer.values };
  };
  void fieldNames().then((names) => {
    const select = $<HTMLSelectElement>("color-by");
    select.replaceChildren(new Option("Category", ""), ...names.map((name) => new Option(name, name)));
    select.value = colorField;
  }, () => {});
  exportCsv = async (polygon) => {
    // A selection names the map it was drawn on; a refresh since is refused by the server.
    const generation = Number(polygon && view.region ? view.region.generation : shownGeneration);
    const body = JSON.stringify(polygon ? { generation, polygon } : { generation });
    const response = await fetch("/api/admin/embedding-map/export", {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body,
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => null);
      throw new Error(answer?.error?.message ?? `${response.status} ${response.statusText}`);
    }
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `embedding-map-generation-${generation}${polygon ? "-selection" : ""}.csv`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    exports++;
  };
  let retry = 1000;
  while (mine === session) {
    try {
      // The watch carries summaries only; the points are fetched once per map (one download per
      // page load, and one per new map after).
      for await (const status of client.watchEmbeddingMap({ omitPoints: true }, { headers })) {
        if (mine !== session) return;
        retry = 1000;
        if (status.state === MapState.COMPUTING) showComputing(status);
        else if (status.state === MapState.READY) {
          showReady(mapKey(status) === shownKey ? status : await client.getEmbeddingMap({}, { headers }));
        } else if (status.state === MapState.FAILED) {
          setState("failed");
          $("map-panel").hidden = true;
          showStatus("The map could not be computed", `${status.failure?.message ?? "unknown reason"} — fix the corpus (the embedding service reads a changed corpus file again unless its corpus watch is off) or its configuration (then restart it).`);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, RECHECK_MS));
    } catch (error) {
      if (mine !== session) return;
      const e = ConnectError.from(error);
      if (e.code === Code.Unauthenticated) {
        sessionStorage.removeItem(TOKEN_KEY);
        return showSignIn("The admin token was not accepted (401). Check it and sign in again.");
      }
      setState("unreachable");
      if (!shownKey) $("map-panel").hidden = true;
      showStatus(
        "The map service cannot be reached",
        `${e.rawMessage || e.message}. Retrying in ${Math.round(retry / 1000)} s; if this persists, check that the api-service and embedding-service are running.`,
      );
      await new Promise((resolve) => setTimeout(resolve, retry));
      retry = Math.min(retry * 2, 30000);
    }
  }
}

function start(token: string, baseUrl: string) {
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("sign-in-error").textContent = "";
  setState("connecting");
  showStatus("Connecting…");
  void follow(token, baseUrl);
}

async function main() {
  const baseUrl = await grpcWebUrl();
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $<HTMLInputElement>("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token, baseUrl);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    shownKey = "";
    showSignIn();
  });
  $<HTMLInputElement>("search").addEventListener("input", (event) => {
    view.search = (event.target as HTMLInputElement).value.trim().toLowerCase();
    view.draw();
    updateSearchCount();
    saveFragment();
  });
  $("density").addEventListener("click", (event) => {
    view.density = !view.density;
    (event.currentTarget as HTMLElement).setAttribute("aria-pressed", String(view.density));
    view.draw();
  });

  const canvas = $<HTMLCanvasElement>("map");
  const tooltip = $("tooltip");
  let dragging: { x: number; y: number } | null = null;
  const local = (e: PointerEvent): [number, number] => {
    const rect = canvas.getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  };
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    if (tool === "pan") dragging = { x: e.clientX, y: e.clientY };
    else view.drawing = [local(e)];
  });
  let pressedAt: { x: number; y: number } | null = null;
  canvas.addEventListener("pointerdown", (e) => (pressedAt = { x: e.clientX, y: e.clientY }));
  canvas.addEventListener("pointerup", (e) => {
    dragging = null;
    const drawn = view.drawing;
    if (drawn) {
      view.drawing = null;
      const shape: [number, number][] = tool === "box" && drawn.length >= 2
        ? [drawn[0], [drawn[1][0], drawn[0][1]], drawn[1], [drawn[0][0], drawn[1][1]]]
        : simplify(drawn);
      if (shape.length >= 3) {
        view.selectRegion(shape.map(([x, y]) => view.toMap(x, y)), shownGeneration);
        showRegion();
      } else view.requestDraw();
      pressedAt = null;
      return;
    }
    // A click, not a drag: the point under it, if any.
    if (pressedAt && Math.abs(e.clientX - pressedAt.x) + Math.abs(e.clientY - pressedAt.y) < 4) {
      const rect = canvas.getBoundingClientRect();
      const point = view.pick(e.clientX - rect.left, e.clientY - rect.top);
      if (point) void selectPoint(view.indexOf(point.id));
    }
    pressedAt = null;
  });
  $("point-close").addEventListener("click", closePanel);
  $("compare").addEventListener("click", () => setComparing(!comparing));
  $<HTMLSelectElement>("color-by").addEventListener("change", (event) => {
    // Choosing a field ends a comparison.
    colorField = (event.target as HTMLSelectElement).value;
    setComparing(false);
  });
  $("tool-lasso").addEventListener("click", () => setTool("lasso"));
  $("tool-box").addEventListener("click", () => setTool("box"));
  $("selection-clear").addEventListener("click", clearRegion);
  const exporting = (polygon: () => [number, number][] | null) => async () => {
    $("selection-error").textContent = "";
    try {
      await exportCsv?.(polygon());
    } catch (error) {
      const message = `The export failed: ${(error as Error).message}`;
      if (view.region) $("selection-error").textContent = message; else showStatus("Export", message);
    }
  };
  $("selection-export").addEventListener("click", exporting(() => view.region?.polygon ?? null));
  $("export-map").addEventListener("click", exporting(() => null));
  // Zoom and pan end up in the link a moment after they settle.
  let linkTimer = 0;
  const saveSoon = () => {
    clearTimeout(linkTimer);
    linkTimer = window.setTimeout(saveFragment, 300);
  };
  canvas.addEventListener("wheel", saveSoon);
  canvas.addEventListener("pointerup", saveSoon);
  canvas.addEventListener("keyup", saveSoon);
  $("contours").addEventListener("click", (event) => {
    view.showContours = !view.showContours;
    (event.currentTarget as HTMLElement).setAttribute("aria-pressed", String(view.showContours));
    view.draw();
  });
  $("labels").addEventListener("click", (event) => {
    view.showLabels = !view.showLabels;
    (event.currentTarget as HTMLElement).setAttribute("aria-pressed", String(view.showLabels));
    view.draw();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (view.drawing) {
      // A box keeps its corner and the pointer; a lasso every point the pointer passes.
      if (tool === "box") view.drawing = [view.drawing[0], local(e)];
      else view.drawing.push(local(e));
      view.requestDraw();
      return;
    }
    if (dragging) {
      view.pan(e.clientX - dragging.x, e.clientY - dragging.y);
      dragging = { x: e.clientX, y: e.clientY };
      tooltip.hidden = true;
      return;
    }
    const rect = canvas.getBoundingClientRect();
    const point = view.pick(e.clientX - rect.left, e.clientY - rect.top);
    tooltip.hidden = !point;
    if (point) {
      const colorBy = view.colorBy;
      const value = colorBy?.values[view.indexOf(point.id)];
      const shown = typeof value === "number" ? shortNumber(value) : (value ?? (colorBy?.numeric && colorBy.missing?.label) ?? "none");
      const field = colorBy ? ` · ${colorBy.field}: ${shown}` : "";
      tooltip.textContent = `${point.name || `#${point.id}`} · ${point.category}${field}`;
      tooltip.style.left = `${e.clientX - rect.left + 12}px`;
      tooltip.style.top = `${e.clientY - rect.top + 12}px`;
    }
  });
  canvas.addEventListener("pointerleave", () => (tooltip.hidden = true));
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    view.zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 40;
    const actions: Record<string, () => void> = {
      "+": () => view.zoom(1.2, canvas.clientWidth / 2, canvas.clientHeight / 2),
      "=": () => view.zoom(1.2, canvas.clientWidth / 2, canvas.clientHeight / 2),
      "-": () => view.zoom(1 / 1.2, canvas.clientWidth / 2, canvas.clientHeight / 2),
      "0": () => view.resetView(),
      ArrowLeft: () => view.pan(step, 0),
      ArrowRight: () => view.pan(-step, 0),
      ArrowUp: () => view.pan(0, step),
      ArrowDown: () => view.pan(0, -step),
      // The point nearest the middle of the view.
      Enter: () => {
        const point = view.pick(canvas.clientWidth / 2, canvas.clientHeight / 2, Infinity);
        if (point) void selectPoint(view.indexOf(point.id));
      },
      Escape: () => {
        closePanel();
        clearRegion();
      },
      l: () => setTool("lasso"),
      b: () => setTool("box"),
    };
    // Ctrl/Cmd/Alt with a letter belong to the browser (Ctrl+L: the address bar).
    const action = e.ctrlKey || e.metaKey || e.altKey ? undefined : actions[e.key];
    if (action) {
      e.preventDefault();
      action();
    }
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved, baseUrl); else showSignIn();
}

void main();
