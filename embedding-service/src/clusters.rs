//! Clusters found on the map, at three levels of detail, for labels an admin can read at each
//! zoom: k-means on the map's 2-D points (k-means++ from a fixed seed, so the same map gives the
//! same clusters on every run and replica). Every point belongs to one cluster at each level.

use embeddingmap_proto::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Clusters per level, before the cap of one per `MIN_POINTS_PER_CLUSTER` points.
const LEVELS: [usize; 3] = [12, 36, 108];
const MIN_POINTS_PER_CLUSTER: usize = 20;
const ITERATIONS: usize = 25;
const SEED: u64 = 0x5eed_c105;

/// The map's clusters at every level, with each point's cluster per level.
pub fn find(points: &[pb::Point]) -> Vec<pb::ClusterLevel> {
    let xy: Vec<[f32; 2]> = points.iter().map(|p| [p.x, p.y]).collect();
    LEVELS
        .iter()
        .enumerate()
        .map(|(level, &k)| {
            let k = k.min(xy.len() / MIN_POINTS_PER_CLUSTER).max(1).min(xy.len().max(1));
            let (centres, assignment) = kmeans(&xy, k, SEED.wrapping_add(level as u64));
            let mut sizes = vec![0u64; centres.len()];
            for &cluster in &assignment {
                sizes[cluster as usize] += 1;
            }
            pb::ClusterLevel {
                level: level as u32,
                clusters: centres
                    .iter()
                    .zip(&sizes)
                    .enumerate()
                    .map(|(id, (&[x, y], &size))| pb::Cluster { id: id as u32, x, y, size })
                    .collect(),
                assignment,
            }
        })
        .collect()
}

/// Lloyd's k-means from k-means++ seeds; empty clusters keep their centre (and size 0).
fn kmeans(points: &[[f32; 2]], k: usize, seed: u64) -> (Vec<[f32; 2]>, Vec<u32>) {
    if points.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let distance = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
    let mut centres = vec![points[rng.random_range(0..points.len())]];
    let mut nearest: Vec<f32> = points.iter().map(|&p| distance(p, centres[0])).collect();
    while centres.len() < k {
        let total: f64 = nearest.iter().map(|&d| f64::from(d)).sum();
        if total <= 0.0 {
            break;
        }
        let mut target = rng.random::<f64>() * total;
        let mut chosen = points.len() - 1;
        for (index, &d) in nearest.iter().enumerate() {
            target -= f64::from(d);
            if target <= 0.0 {
                chosen = index;
                break;
            }
        }
        let centre = points[chosen];
        centres.push(centre);
        for (d, &p) in nearest.iter_mut().zip(points) {
            *d = d.min(distance(p, centre));
        }
    }
    let mut assignment = vec![0u32; points.len()];
    for _ in 0..ITERATIONS {
        let mut changed = false;
        for (slot, &p) in assignment.iter_mut().zip(points) {
            let best = (0..centres.len())
                .min_by(|&a, &b| distance(p, centres[a]).total_cmp(&distance(p, centres[b])))
                .unwrap_or(0) as u32;
            changed |= *slot != best;
            *slot = best;
        }
        let mut sums = vec![[0.0f64; 3]; centres.len()];
        for (&cluster, &[x, y]) in assignment.iter().zip(points) {
            let sum = &mut sums[cluster as usize];
            sum[0] += f64::from(x);
            sum[1] += f64::from(y);
            sum[2] += 1.0;
        }
        for (centre, [x, y, count]) in centres.iter_mut().zip(sums) {
            if count > 0.0 {
                *centre = [(x / count) as f32, (y / count) as f32];
            }
        }
        if !changed {
            break;
        }
    }
    (centres, assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_in_one_cluster_per_level_and_runs_agree() {
        let points: Vec<pb::Point> = (0..600)
            .map(|i| {
                let blob = (i % 3) as f32 * 50.0;
                pb::Point { id: i, x: blob + (i as f32 * 0.37).sin(), y: (i as f32 * 0.11).cos() }
            })
            .collect();
        let levels = find(&points);
        assert_eq!(levels.len(), 3);
        for level in &levels {
            assert_eq!(level.assignment.len(), 600);
            let sizes: u64 = level.clusters.iter().map(|c| c.size).sum();
            assert_eq!(sizes, 600, "every point counted once");
            assert!(level.assignment.iter().all(|&c| (c as usize) < level.clusters.len()));
        }
        assert_eq!(levels[0].clusters.len(), 12);
        assert_eq!(levels[2].clusters.len(), 30, "at most one cluster per 20 points");
        assert_eq!(levels, find(&points), "the same on every run");
    }
}
