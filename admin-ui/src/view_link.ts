// A view of the map as a link: zoom and pan, hidden categories, the search and the selection's
// polygon, kept in the URL fragment. The fragment never leaves the browser (no server log sees
// it), and the token is never part of it. A link from someone else is input like any other: what
// does not parse is left out, never thrown.

export interface ViewLink {
  view: { scale: number; x: number; y: number } | null;
  hidden: string[];
  search: string;
  /** The item field the points are coloured by; empty: the category. */
  color: string;
  polygon: [number, number][] | null;
  /** Whether points are coloured by how far they moved since the previous map. */
  compare: boolean;
}

/** Most vertices a link's polygon may bring (a lasso is simplified to 200 before it is kept). */
const MAX_VERTICES = 2000;

const finite = (values: number[]) => values.every((v) => Number.isFinite(v));

/** `#view=...&hidden=...&q=...&polygon=...` as a fragment. */
export function writeFragment(link: ViewLink): string {
  const params = new URLSearchParams();
  if (link.view) params.set("view", [link.view.scale, link.view.x, link.view.y].map((v) => +v.toFixed(4)).join(","));
  if (link.hidden.length) params.set("hidden", JSON.stringify(link.hidden));
  if (link.search) params.set("q", link.search);
  if (link.color) params.set("color", link.color);
  if (link.compare) params.set("compare", "1");
  if (link.polygon) params.set("polygon", link.polygon.map(([x, y]) => `${+x.toPrecision(7)},${+y.toPrecision(7)}`).join(";"));
  const text = params.toString();
  return text ? `#${text}` : "";
}

/** The link in `hash`, or null when it holds none. */
export function readFragment(hash: string): ViewLink | null {
  if (hash.length <= 1) return null;
  const params = new URLSearchParams(hash.slice(1));
  const link: ViewLink = { view: null, hidden: [], search: params.get("q") ?? "", color: params.get("color") ?? "", polygon: null, compare: params.get("compare") === "1" };
  const view = params.get("view")?.split(",").map(Number);
  if (view?.length === 3 && finite(view) && view[0] > 0) link.view = { scale: view[0], x: view[1], y: view[2] };
  try {
    const hidden = JSON.parse(params.get("hidden") ?? "[]");
    if (Array.isArray(hidden)) link.hidden = hidden.filter((c): c is string => typeof c === "string");
  } catch {
    // Not JSON: no categories hidden.
  }
  const vertices = params.get("polygon")?.split(";").map((pair) => pair.split(",").map(Number));
  if (vertices && vertices.length >= 3 && vertices.length <= MAX_VERTICES && vertices.every((v) => v.length === 2 && finite(v))) {
    link.polygon = vertices as [number, number][];
  }
  return link;
}
