// Comparing the map shown with the one it refreshed: how far each point moved, and which points
// arrived. A refresh lays points out from their previous places, so the two maps' coordinates
// compare directly.
import type { ColorField, Point } from "./map_view";

/** Points added since the previous map: a red apart from the scale's blues, greens and yellows. */
export const ADDED_COLOR = "#e6194b";
/** The scale ends at this quantile of the distances moved, so a few far movers do not wash out
 *  the rest; farther ones draw in the top colour. */
const TOP_QUANTILE = 0.99;

export interface PreviousPoint {
  id: bigint;
  x: number;
  y: number;
}

export interface Comparison {
  /** Colours by distance moved, with the added points (no value) in `ADDED_COLOR`. */
  color: ColorField;
  added: number;
  /** Points of the previous map that are not on this one. */
  removed: number;
}

/** `points` against the `previous` map's positions. */
export function compare(points: Point[], previous: PreviousPoint[], previousGeneration: bigint): Comparison {
  const before = new Map(previous.map((p) => [p.id, p]));
  let kept = 0;
  const values = points.map((p) => {
    const old = before.get(p.id);
    if (!old) return null;
    kept++;
    return Math.hypot(p.x - old.x, p.y - old.y);
  });
  const distances = values.filter((v): v is number => v !== null).sort((a, b) => a - b);
  const top = distances.length ? distances[Math.min(distances.length - 1, Math.floor(TOP_QUANTILE * distances.length))] : 0;
  return {
    color: {
      field: `moved since map ${previousGeneration}`,
      numeric: true,
      values,
      min: 0,
      max: top,
      clipped: top < (distances.at(-1) ?? 0),
      missing: { label: "added", color: ADDED_COLOR },
    },
    added: points.length - kept,
    removed: previous.length - kept,
  };
}
