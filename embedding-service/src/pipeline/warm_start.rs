//! Where a refresh's optimisation starts: the points its parent map had stay where they were, and
//! each new point starts beside its nearest neighbours already placed, at their mean weighted the
//! way affinities weigh neighbours (nearest most), as openTSNE's `prepare_partial` places points
//! into an existing embedding. Removed points are simply not in the new corpus.

use bhtsne::Neighbor;

/// Passes over the new points: each places those with a neighbour placed by an earlier one, so a
/// group of new points grows in from its edge.
const PASSES: usize = 8;

/// A new point's offset from where its neighbours put it, as a share of the map's RMS radius:
/// enough that two new points with the same neighbours do not start on top of each other.
const NEW_POINT_JITTER: f32 = 1e-3;

/// The parent map's position of each row of the new corpus that it had (`None` for new rows).
#[derive(Debug, Clone)]
pub struct WarmStart {
    pub positions: Vec<Option<[f32; 2]>>,
}

impl WarmStart {
    /// The parent's position of each of `ids` it had, from the parent's `(id, position)` points.
    pub fn from_parent(parent: impl IntoIterator<Item = (i64, [f32; 2])>, ids: &[i64]) -> Self {
        let placed: std::collections::HashMap<i64, [f32; 2]> = parent.into_iter().collect();
        WarmStart { positions: ids.iter().map(|id| placed.get(id).copied()).collect() }
    }

    /// Whether a refresh should start from the parent: unless more than
    /// `--refresh-fresh-above` of its points are new.
    pub fn applies(&self, settings: &super::MapSettings) -> bool {
        self.new_share() <= settings.refresh_fresh_above
    }

    /// The share of rows the parent map did not have.
    pub fn new_share(&self) -> f64 {
        let new = self.positions.iter().filter(|position| position.is_none()).count();
        new as f64 / self.positions.len().max(1) as f64
    }

    /// The initial layout, `[x0, y0, x1, y1, ...]` in row order; `neighbors` are the new corpus's
    /// neighbour lists, by row.
    pub(super) fn initial_layout(&self, neighbors: &[Vec<Neighbor<f32>>]) -> Vec<f32> {
        let mut placed = self.positions.clone();
        for _ in 0..PASSES {
            // Each pass reads only the previous pass's placements: the result does not depend on
            // the order points are visited in.
            let next: Vec<Option<[f32; 2]>> = placed
                .iter()
                .zip(neighbors)
                .map(|(position, neighbors)| position.or_else(|| weighted_mean(neighbors, &placed)))
                .collect();
            if next == placed {
                break;
            }
            placed = next;
        }
        let kept: Vec<[f32; 2]> = self.positions.iter().flatten().copied().collect();
        let count = kept.len().max(1) as f32;
        let centre = kept.iter().fold([0.0f32; 2], |sum, p| [sum[0] + p[0] / count, sum[1] + p[1] / count]);
        let radius = (kept.iter().map(|p| (p[0] - centre[0]).powi(2) + (p[1] - centre[1]).powi(2)).sum::<f32>()
            / count)
            .sqrt()
            .max(1e-3);
        let mut layout = Vec::with_capacity(2 * placed.len());
        for (row, (position, kept)) in placed.iter().zip(&self.positions).enumerate() {
            let [x, y] = match (kept, position) {
                (Some(kept), _) => *kept,
                (None, Some(near)) => offset(*near, row, NEW_POINT_JITTER * radius),
                // No placed neighbour within the passes (a new group of its own): near the centre.
                (None, None) => offset(centre, row, 0.05 * radius),
            };
            layout.extend([x, y]);
        }
        layout
    }
}

/// The placed neighbours' mean position, weighted by Gaussian affinities calibrated to
/// `PLACEMENT_PERPLEXITY` (as t-SNE weighs neighbours, and as openTSNE places new points with
/// perplexity 5): the nearest few decide; None if no neighbour is placed.
fn weighted_mean(neighbors: &[Neighbor<f32>], placed: &[Option<[f32; 2]>]) -> Option<[f32; 2]> {
    let known: Vec<(f32, [f32; 2])> =
        neighbors.iter().filter_map(|n| placed[n.index].map(|p| (n.distance, p))).collect();
    let nearest = known.iter().map(|(distance, _)| *distance).reduce(f32::min)?;
    let squared: Vec<f64> = known.iter().map(|(d, _)| f64::from(d * d - nearest * nearest)).collect();
    let weights = calibrated_weights(&squared, PLACEMENT_PERPLEXITY);
    let (mut sum, mut total) = ([0.0f64; 2], 0.0f64);
    for (weight, (_, [x, y])) in weights.iter().zip(&known) {
        sum = [sum[0] + weight * f64::from(*x), sum[1] + weight * f64::from(*y)];
        total += weight;
    }
    Some([(sum[0] / total) as f32, (sum[1] / total) as f32])
}

/// How many neighbours effectively place a new point.
const PLACEMENT_PERPLEXITY: f64 = 5.0;

/// exp(-beta * d²) for each squared distance (shifted so the nearest is 0), with beta found by
/// bisection so that the weights' perplexity is `perplexity` (or as near as their count allows).
fn calibrated_weights(squared: &[f64], perplexity: f64) -> Vec<f64> {
    let target = perplexity.min(squared.len() as f64).ln();
    let weights = |beta: f64| squared.iter().map(|d| (-beta * d).exp()).collect::<Vec<_>>();
    let (mut low, mut high, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
    for _ in 0..64 {
        let w = weights(beta);
        let total: f64 = w.iter().sum();
        // The entropy of the normalised weights: ln(sum w) + beta * mean(d) under them.
        let h = total.ln() + beta * w.iter().zip(squared).map(|(w, d)| w * d).sum::<f64>() / total;
        if (h - target).abs() < 1e-5 {
            break;
        }
        if h > target {
            low = beta;
            beta = if high.is_finite() { (beta + high) / 2.0 } else { beta * 2.0 };
        } else {
            high = beta;
            beta = (beta + low) / 2.0;
        }
    }
    weights(beta)
}

/// `point` moved by up to `scale` in a direction fixed by `row` (splitmix64), never random.
fn offset([x, y]: [f32; 2], row: usize, scale: f32) -> [f32; 2] {
    let mut z = (row as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = |bits: u64| (bits & 0xffff) as f32 / 65535.0 * 2.0 - 1.0;
    [x + scale * unit(z), y + scale * unit(z >> 16)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbor(index: usize, distance: f32) -> Neighbor<f32> {
        Neighbor { index, distance }
    }

    #[test]
    fn kept_points_stay_and_new_ones_start_beside_their_nearest_placed_neighbours() {
        // Rows 0-4 near (10, 0), rows 5-9 near (0, 0), rows 10 and 11 new.
        let mut positions: Vec<Option<[f32; 2]>> = (0..10)
            .map(|row| Some(if row < 5 { [10.0 + row as f32 * 0.1, 0.0] } else { [row as f32 * 0.1, 0.0] }))
            .collect();
        positions.extend([None, None]);
        let start = WarmStart { positions };
        let mut neighbors: Vec<Vec<Neighbor<f32>>> = (0..10).map(|row| vec![neighbor((row + 1) % 10, 1.0)]).collect();
        // Row 10 is nearer rows 0-4 than rows 5-9; row 11's only neighbour is row 10, so it is
        // placed in the second pass, beside it.
        neighbors.push((0..10).map(|row| neighbor(row, if row < 5 { 0.1 } else { 0.6 })).collect());
        neighbors.push(vec![neighbor(10, 0.1)]);
        let layout = start.initial_layout(&neighbors);
        assert_eq!(&layout[..2], &[10.0, 0.0], "kept points stay");
        assert!(layout[20] > 9.5 && layout[20] < 10.5, "beside its nearest: {layout:?}");
        assert!((layout[22] - layout[20]).abs() < 0.1, "{layout:?}");
        assert_eq!(start.new_share(), 2.0 / 12.0);
        assert_eq!(layout, start.initial_layout(&neighbors), "the same every time");
    }

    #[test]
    fn calibrated_weights_reach_their_perplexity() {
        let squared: Vec<f64> = (0..90).map(|i| f64::from(i) * 0.01).collect();
        let weights = calibrated_weights(&squared, 5.0);
        let total: f64 = weights.iter().sum();
        let entropy: f64 = weights.iter().map(|w| w / total).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
        assert!((entropy.exp() - 5.0).abs() < 0.01, "perplexity {}", entropy.exp());
    }
}
