//! Geometry before the neighbour search: cosine rows, PCA, and the initial 2-D layout.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ndarray::{Array2, Axis, s};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::{error::MapError, faiss_ext};

/// Scale of the initial layout's first axis, as openTSNE and scikit-learn use: small enough that
/// early exaggeration, not the initial spread, shapes the clusters.
const INITIAL_STD: f32 = 1e-4;

/// Rows scaled to unit length, so Euclidean distance ranks neighbours by cosine similarity.
/// A zero row stays zero. In place: the corpus is the largest allocation of a run.
pub fn l2_normalized(mut normalized: Array2<f32>) -> Array2<f32> {
    for mut row in normalized.axis_iter_mut(Axis(0)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    normalized
}

/// A corpus's rows at unit length, shared: the map reads them for its PCA (and searches them
/// as they are when they are narrow enough to need none), and the neighbour index keeps them, so
/// the service holds one copy of a corpus (1.5 GB at 1M x 384) rather than two. Only `UnitRows::new` makes one, so the rows are always normalised.
#[derive(Clone)]
pub struct UnitRows {
    rows: Arc<Array2<f32>>,
    /// How long normalising took, which the map's timings report.
    pub normalized_in: Duration,
}

impl UnitRows {
    /// The corpus's rows normalised in place.
    pub fn new(vectors: Array2<f32>) -> Self {
        let started = Instant::now();
        let rows = Arc::new(l2_normalized(vectors));
        UnitRows { rows, normalized_in: started.elapsed() }
    }

    pub fn rows(&self) -> &Array2<f32> {
        &self.rows
    }

    /// The rows themselves, for a holder that outlives the map's computation.
    pub fn shared(&self) -> Arc<Array2<f32>> {
        Arc::clone(&self.rows)
    }
}

/// How many principal components the neighbour search keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcaWidth {
    Fixed(usize),
    /// Twice the components that stand above the noise floor, within `min..=max`.
    AboveNoise {
        min: usize,
        max: usize,
    },
}

impl PcaWidth {
    /// The width for eigenvalues `variances` (all `d` of them, largest first) of `n` rows.
    ///
    /// The noise floor is the Marchenko-Pastur edge of isotropic noise whose level is the median
    /// eigenvalue: sigma^2 (1 + sqrt(d / n))^2. Sentence embeddings put 110-175 of 384 components
    /// above it (their variance decays slowly, and the neighbours live in that tail), clustered
    /// synthetic corpora 15-16 (a few directions in isotropic noise, which more components only
    /// add to the neighbour search). Twice the count keeps the first whole and the second at
    /// the minimum, with the components' own ranks deciding, not a share of variance.
    fn choose(self, variances: &[f32], n: usize) -> usize {
        match self {
            PcaWidth::Fixed(width) => width,
            PcaWidth::AboveNoise { min, max } => {
                let d = variances.len();
                let mut sorted = variances.to_vec();
                sorted.sort_by(f32::total_cmp);
                let edge = sorted[d / 2] * (1.0 + (d as f32 / n.max(1) as f32).sqrt()).powi(2);
                let signal = variances.iter().filter(|&&v| v > edge).count();
                (2 * signal).clamp(min.min(max), max)
            }
        }
    }

    /// The most components this choice can keep.
    pub fn widest(self) -> usize {
        match self {
            PcaWidth::Fixed(width) | PcaWidth::AboveNoise { max: width, .. } => width,
        }
    }
}

/// FAISS PCA down to the columns `width` picks, or None when the input is no wider than `width`
/// allows (the input is then used as it is, not copied).
pub fn pca_reduce(vectors: &Array2<f32>, width: PcaWidth) -> Result<Option<Array2<f32>>, MapError> {
    let (n, d) = vectors.dim();
    if d <= width.widest() {
        return Ok(None);
    }
    let flat = vectors.as_standard_layout();
    // Every axis is needed for the automatic choice (the noise level is the median eigenvalue);
    // with fewer rows than columns FAISS has only as many axes as rows.
    let axes = if matches!(width, PcaWidth::Fixed(_)) { width.widest() } else { d }.min(n);
    // A fixed width needs no spectrum: all its axes are kept.
    let choose = |variances: &[f32]| width.choose(variances, n);
    let choose: Option<faiss_ext::WidthChooser> =
        if matches!(width, PcaWidth::Fixed(_)) { None } else { Some(&choose) };
    let (projected, kept) = faiss_ext::pca_project(flat.as_slice().expect("standard layout"), d, axes, choose)
        .map_err(|e| MapError::faiss("PCA", e))?;
    Array2::from_shape_vec((n, kept), projected).map(Some).map_err(|e| MapError::faiss("PCA", e))
}

/// The first two principal components (FAISS orders them by decreasing variance), scaled so the
/// first has standard deviation 1e-4.
pub fn pca_initial_layout(reduced: &Array2<f32>) -> Result<Vec<f32>, MapError> {
    let (n, d) = reduced.dim();
    let top_two = if d > 2 {
        let flat = reduced.as_standard_layout();
        let (projected, _) = faiss_ext::pca_project(flat.as_slice().expect("standard layout"), d, 2, None)
            .map_err(|e| MapError::faiss("PCA initialisation", e))?;
        Array2::from_shape_vec((n, 2), projected).map_err(|e| MapError::faiss("PCA initialisation", e))?
    } else {
        reduced.slice(s![.., ..2]).to_owned()
    };
    let first = top_two.column(0);
    let mean = first.mean().unwrap_or(0.0);
    let std = (first.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32).sqrt();
    // A corpus of identical points has no spread to scale; keep it at the origin.
    let scale = if std > 0.0 { INITIAL_STD / std } else { 0.0 };
    Ok(top_two.iter().map(|v| v * scale).collect())
}

/// Gaussian noise with standard deviation 1e-4 from `seed`.
pub fn random_initial_layout(points: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, INITIAL_STD).expect("valid normal");
    (0..points * 2).map(|_| normal.sample(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpora_with_fewer_rows_than_columns_are_reduced_too() {
        use super::{PcaWidth, pca_reduce};
        // The seed's shape: fewer points (here 60) than dimensions (100).
        let vectors = ndarray::Array2::from_shape_fn((60, 100), |(i, j)| ((i * 31 + j * 17) % 23) as f32 - 11.0);
        for width in [PcaWidth::AboveNoise { min: 5, max: 8 }, PcaWidth::Fixed(8)] {
            let reduced = pca_reduce(&vectors, width).unwrap().expect("100 columns are reduced");
            assert_eq!(reduced.nrows(), 60);
            assert!((5..=8).contains(&reduced.ncols()), "{width:?}: {} columns", reduced.ncols());
        }
    }

    #[test]
    fn the_automatic_width_counts_components_above_the_noise_edge() {
        use super::PcaWidth;
        let width = PcaWidth::AboveNoise { min: 50, max: 200 };
        // 384 eigenvalues: a flat noise floor of 1 with `k` components far above it.
        let spectrum = |k: usize| -> Vec<f32> { (0..384).map(|i| if i < k { 50.0 } else { 1.0 }).collect() };
        assert_eq!(width.choose(&spectrum(15), 60_000), 50, "few signal components: the minimum");
        assert_eq!(width.choose(&spectrum(80), 60_000), 160);
        assert_eq!(width.choose(&spectrum(150), 60_000), 200, "many: the maximum");
        assert_eq!(PcaWidth::Fixed(64).choose(&spectrum(150), 60_000), 64);
    }

    use super::*;

    #[test]
    fn rows_become_unit_length_and_zero_rows_stay_zero() {
        let vectors = ndarray::array![[3.0f32, 4.0], [0.0, 0.0]];
        let normalized = l2_normalized(vectors);
        assert_eq!(normalized, ndarray::array![[0.6f32, 0.8], [0.0, 0.0]]);
    }

    #[test]
    fn random_layout_depends_on_the_seed_only() {
        assert_eq!(random_initial_layout(5, 7), random_initial_layout(5, 7));
        assert_ne!(random_initial_layout(5, 7), random_initial_layout(5, 8));
    }
}
