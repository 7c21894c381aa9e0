//! The map's settings in one place: what an operator asks for (flags and `EMBEDDING_*`
//! variables, shared by the service and the benchmark command), resolved once per corpus by
//! `MapSettings::resolve` into the `MapParameters` a run uses, which become the proto's
//! `MapParameters` through `From`.

use clap::ValueEnum;
use embeddingmap_proto::v1 as pb;

use super::{GradientMethod, Initialization, KnnMethod, PcaWidth, all_cores};
use crate::error::MapError;

/// Smallest perplexity a clamped run may use; a corpus too small even for it fails.
pub const MIN_PERPLEXITY: f64 = 2.0;

/// Below this many points Barnes-Hut is used: it scores a little higher there, though FFT
/// interpolation is faster at every size measured (docs/benchmarks.md).
pub const FFT_MIN_POINTS: usize = 5_000;

/// The automatic PCA width's bounds: at most N / `ROWS_PER_PCA_DIMENSION` within these.
const PCA_DIMS: std::ops::RangeInclusive<usize> = 50..=200;
const ROWS_PER_PCA_DIMENSION: usize = 10;

/// The map's parameters as asked for. Zero learning rates mean "pick by N".
#[derive(Debug, Clone, clap::Args)]
pub struct MapSettings {
    /// t-SNE perplexity; clamped to (N - 1) / 3 for small corpora.
    #[arg(long, env = "EMBEDDING_PERPLEXITY", default_value_t = 30.0)]
    pub perplexity: f64,

    /// Optimisation iterations in all, early exaggeration included. 500 with the rate raised to N
    /// after exaggeration keep real corpora's neighbours better than openTSNE's 1000 (docs/benchmarks.md).
    #[arg(long, env = "EMBEDDING_ITERATIONS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,

    /// Iterations with early exaggeration, at the start; at most --iterations.
    #[arg(long, env = "EMBEDDING_EXAGGERATION_ITERATIONS", default_value_t = 250)]
    pub exaggeration_iterations: u32,

    /// Factor the affinities are multiplied by during early exaggeration.
    #[arg(long, env = "EMBEDDING_EARLY_EXAGGERATION", default_value_t = 12.0)]
    pub early_exaggeration: f64,

    /// Seed for every random choice (random initialisation); with PCA initialisation the map is
    /// a pure function of the corpus.
    #[arg(long, env = "EMBEDDING_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Dimensions to project to with PCA before the neighbour search, when the corpus is wider;
    /// 0 picks twice the components above the noise floor, within 50 and N / 10 (at most 200).
    /// On sentence embeddings that is 200, which keep most of their true neighbours where the
    /// usual 50 lost a fifth of those the map could keep; on clustered synthetic data, whose
    /// extra components are noise, 50; below 2,000 points there are too few rows to estimate
    /// 200 components (docs/benchmarks.md).
    #[arg(long, env = "EMBEDDING_PCA_DIMS", default_value_t = 0)]
    pub pca_dims: u32,

    /// Worker threads for the computation (FAISS and t-SNE); 0 uses every core.
    #[arg(long, env = "EMBEDDING_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Learning rate during early exaggeration; 0 picks N / exaggeration (as openTSNE does).
    #[arg(long, env = "EMBEDDING_LEARNING_RATE", default_value_t = 0.0)]
    pub learning_rate: f64,

    /// Learning rate once early exaggeration ends; 0 picks N (as openTSNE does), with each step
    /// capped at 5 map units.
    #[arg(long, env = "EMBEDDING_FINAL_LEARNING_RATE", default_value_t = 0.0)]
    pub final_learning_rate: f64,

    /// Nearest-neighbour search; `auto` searches exactly up to 20,000 points and in cells above.
    #[arg(long, env = "EMBEDDING_KNN", value_enum, default_value_t = KnnChoice::Auto)]
    pub knn: KnnChoice,

    /// With `--knn cells` (and auto), how many nearest cells each cell's points are searched
    /// among.
    #[arg(long, env = "EMBEDDING_KNN_PROBES", default_value_t = 48,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub knn_probes: usize,

    /// Repulsive-force approximation.
    #[arg(long, env = "EMBEDDING_GRADIENT", value_enum, default_value_t = GradientChoice::Auto)]
    pub gradient: GradientChoice,

    /// Initial layout.
    #[arg(long, env = "EMBEDDING_INIT", value_enum, default_value_t = Initialization::Pca)]
    pub init: Initialization,

    /// Optimisation iterations of a refresh that starts from the current map (without early
    /// exaggeration: the layout is already formed).
    #[arg(long, env = "EMBEDDING_REFRESH_ITERATIONS", default_value_t = 75)]
    pub refresh_iterations: u32,

    /// A refresh lays the map out afresh instead when more than this share of its points are new
    /// (0 to 1).
    #[arg(long, env = "EMBEDDING_REFRESH_FRESH_ABOVE", default_value_t = 0.5)]
    pub refresh_fresh_above: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KnnChoice {
    /// Exact while there are no more cells than --knn-probes (about probes squared points),
    /// cells above.
    Auto,
    /// FAISS flat: every pair compared.
    Exact,
    /// FAISS HNSW graph.
    Hnsw,
    /// k-means cells (about sqrt(N) points each), each searched exactly among its nearest cells.
    Cells,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GradientChoice {
    /// Barnes-Hut for small corpora, FFT interpolation above.
    Auto,
    Fft,
    BarnesHut,
}

/// The parameters a run used, after clamping and automatic choices.
#[derive(Debug, Clone, PartialEq)]
pub struct MapParameters {
    pub perplexity: f64,
    pub iterations: u32,
    pub exaggeration_iterations: u32,
    pub early_exaggeration: f64,
    pub learning_rate: f64,
    pub final_learning_rate: f64,
    pub seed: u64,
    /// How the PCA width is chosen; `pca_dimensions` is its widest until the PCA has run, then
    /// the width it kept.
    pub pca_width: PcaWidth,
    pub pca_dimensions: u32,
    pub neighbors: u32,
    pub knn: KnnMethod,
    pub gradient: GradientMethod,
    pub init: Initialization,
    pub threads: usize,
    pub layout: Layout,
}

/// How a map's layout began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// From the initialization, with early exaggeration.
    Fresh,
    /// From the map it refreshes: kept points where they were, new ones beside their neighbours.
    Incremental,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Fresh => "fresh",
            Layout::Incremental => "incremental",
        }
    }
}

impl MapParameters {
    /// The parameters of a refresh that starts from its parent map.
    pub fn incremental(self, settings: &MapSettings) -> Self {
        MapParameters {
            iterations: settings.refresh_iterations.max(1),
            exaggeration_iterations: 0,
            layout: Layout::Incremental,
            ..self
        }
    }
}

impl MapSettings {
    /// What, besides its corpus, decides a map's points, as text: every setting but the thread
    /// count (maps are the same for any thread count). Keys stored maps.
    pub fn identity(&self) -> String {
        let MapSettings {
            perplexity,
            iterations,
            exaggeration_iterations,
            early_exaggeration,
            seed,
            pca_dims,
            threads: _,
            learning_rate,
            final_learning_rate,
            knn,
            knn_probes,
            gradient,
            init,
            refresh_iterations,
            refresh_fresh_above,
        } = self;
        format!(
            "perplexity={perplexity} iterations={iterations} exaggeration_iterations={exaggeration_iterations} \
             early_exaggeration={early_exaggeration} seed={seed} pca_dims={pca_dims} learning_rate={learning_rate} \
             final_learning_rate={final_learning_rate} knn={knn:?} knn_probes={knn_probes} gradient={gradient:?} \
             init={init:?} refresh_iterations={refresh_iterations} refresh_fresh_above={refresh_fresh_above}"
        )
    }

    /// Checks what needs no corpus, so that a service with impossible settings refuses to start
    /// instead of serving a FAILED map; `resolve` checks again (the benchmark calls it alone).
    pub fn validate(&self) -> Result<(), MapError> {
        let invalid = |what: String| Err(MapError::InvalidParameter(what));
        if !(self.perplexity.is_finite() && self.perplexity >= MIN_PERPLEXITY) {
            return invalid(format!("--perplexity must be at least {MIN_PERPLEXITY}, got {}", self.perplexity));
        }
        if !(self.early_exaggeration.is_finite() && self.early_exaggeration >= 1.0) {
            return invalid(format!("--early-exaggeration must be at least 1, got {}", self.early_exaggeration));
        }
        if self.pca_dims == 1 {
            return invalid("--pca-dims must be at least 2 (or 0 for the automatic choice), got 1".into());
        }
        for rate in [self.learning_rate, self.final_learning_rate] {
            // Zero asks for the automatic rate.
            if !(rate.is_finite() && rate >= 0.0) {
                return invalid(format!("learning rates must be positive (or 0 for automatic), got {rate}"));
            }
        }
        if !(0.0..=1.0).contains(&self.refresh_fresh_above) {
            return invalid(format!("--refresh-fresh-above must be within 0 to 1, got {}", self.refresh_fresh_above));
        }
        Ok(())
    }

    /// Validates the settings and decides every automatic choice for a corpus of
    /// `points` x `dimensions`; the only place defaults that depend on the corpus are made.
    pub fn resolve(&self, points: usize, dimensions: usize) -> Result<MapParameters, MapError> {
        self.validate()?;
        let needed = (3.0 * MIN_PERPLEXITY) as usize + 1;
        if points < needed {
            return Err(MapError::TooFewPoints { points, needed });
        }
        // bhtsne needs 3 x perplexity neighbours besides the point itself.
        let perplexity = self.perplexity.min((points - 1) as f64 / 3.0);
        let neighbors = ((3.0 * perplexity) as usize).min(points - 1);
        let pca_width = match self.pca_dims {
            0 => PcaWidth::AboveNoise {
                min: *PCA_DIMS.start(),
                max: (points / ROWS_PER_PCA_DIMENSION).clamp(*PCA_DIMS.start(), *PCA_DIMS.end()),
            },
            chosen => PcaWidth::Fixed(chosen as usize),
        };
        let automatic_rate = |divisor: f64| (points as f64 / divisor).max(50.0);
        let chosen = |rate: f64, divisor: f64| if rate > 0.0 { rate } else { automatic_rate(divisor) };
        Ok(MapParameters {
            perplexity,
            iterations: self.iterations,
            exaggeration_iterations: self.exaggeration_iterations.min(self.iterations),
            early_exaggeration: self.early_exaggeration,
            learning_rate: chosen(self.learning_rate, self.early_exaggeration),
            final_learning_rate: chosen(self.final_learning_rate, 1.0),
            seed: self.seed,
            pca_width,
            pca_dimensions: pca_width.widest().min(dimensions) as u32,
            neighbors: neighbors as u32,
            knn: match self.knn {
                KnnChoice::Auto => KnnMethod::automatic(points, self.knn_probes),
                KnnChoice::Exact => KnnMethod::Exact,
                KnnChoice::Hnsw => KnnMethod::Hnsw,
                KnnChoice::Cells => KnnMethod::Cells { probes: self.knn_probes },
            },
            gradient: match self.gradient {
                GradientChoice::Auto if points >= FFT_MIN_POINTS => GradientMethod::Fft,
                GradientChoice::Auto | GradientChoice::BarnesHut => GradientMethod::BarnesHut,
                GradientChoice::Fft => GradientMethod::Fft,
            },
            init: self.init,
            threads: if self.threads == 0 { all_cores() } else { self.threads },
            layout: Layout::Fresh,
        })
    }
}

impl From<&MapParameters> for pb::MapParameters {
    fn from(parameters: &MapParameters) -> Self {
        pb::MapParameters {
            perplexity: parameters.perplexity,
            iterations: parameters.iterations,
            exaggeration_iterations: parameters.exaggeration_iterations,
            early_exaggeration: parameters.early_exaggeration,
            learning_rate: parameters.learning_rate,
            final_learning_rate: parameters.final_learning_rate,
            seed: parameters.seed,
            pca_dimensions: parameters.pca_dimensions,
            neighbors: parameters.neighbors,
            knn_method: parameters.knn.name().to_owned(),
            gradient_method: parameters.gradient.name().to_owned(),
            initialization: match parameters.layout {
                Layout::Fresh => parameters.init.name().to_owned(),
                Layout::Incremental => "parent".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        map: MapSettings,
    }

    fn settings(flags: &[&str]) -> MapSettings {
        Flags::try_parse_from(std::iter::once("test").chain(flags.iter().copied())).unwrap().map
    }

    #[test]
    fn automatic_choices_follow_the_corpus_size_and_explicit_ones_stand() {
        let small = settings(&[]).resolve(1_000, 64).unwrap();
        assert_eq!((small.knn, small.gradient), (KnnMethod::Exact, GradientMethod::BarnesHut));
        assert_eq!(small.pca_dimensions, 64);
        let pca_width = |points| settings(&[]).resolve(points, 768).unwrap().pca_dimensions;
        assert_eq!((pca_width(530), pca_width(1_200), pca_width(60_000)), (53, 120, 200));
        assert_eq!(pca_width(100), 50);
        assert_eq!(settings(&["--pca-dims", "64"]).resolve(60_000, 768).unwrap().pca_dimensions, 64);
        assert_eq!((small.learning_rate, small.final_learning_rate), (1_000.0 / 12.0, 1_000.0));
        let large = settings(&[]).resolve(100_000, 384).unwrap();
        assert_eq!(large.gradient, GradientMethod::Fft);
        assert!(matches!(large.knn, KnnMethod::Cells { .. }));
        let chosen = settings(&["--knn", "exact", "--gradient", "barnes-hut", "--learning-rate", "7"]);
        let chosen = chosen.resolve(100_000, 384).unwrap();
        assert_eq!(
            (chosen.knn, chosen.gradient, chosen.learning_rate),
            (KnnMethod::Exact, GradientMethod::BarnesHut, 7.0)
        );
    }

    #[test]
    fn small_corpora_clamp_and_bad_settings_are_named() {
        let tiny = settings(&["--exaggeration-iterations", "900", "--iterations", "300"]).resolve(31, 4).unwrap();
        assert_eq!((tiny.perplexity, tiny.neighbors, tiny.exaggeration_iterations), (10.0, 30, 300));
        assert_eq!(tiny.pca_dimensions, 4);
        for (flags, named) in [
            (&["--perplexity", "1"][..], "--perplexity"),
            (&["--pca-dims", "1"], "--pca-dims"),
            (&["--learning-rate=-1"], "learning rate"),
            (&["--early-exaggeration", "0.5"], "--early-exaggeration"),
            (&["--refresh-fresh-above", "2"], "--refresh-fresh-above"),
        ] {
            // Refused before any corpus is read, and again by resolve.
            let error = settings(flags).validate().unwrap_err().to_string();
            assert!(error.contains(named), "{flags:?}: {error}");
            assert!(settings(flags).resolve(1_000, 64).is_err());
        }
        // Whole-number ranges are refused by the parser itself.
        for flags in [["--iterations", "0"], ["--knn-probes", "0"]] {
            let error = <Flags as clap::Parser>::try_parse_from(std::iter::once("test").chain(flags)).err().unwrap();
            assert!(error.to_string().contains(flags[0]), "{flags:?}: {error}");
        }
        assert!(matches!(settings(&[]).resolve(6, 4), Err(MapError::TooFewPoints { points: 6, needed: 7 })));
    }
}
