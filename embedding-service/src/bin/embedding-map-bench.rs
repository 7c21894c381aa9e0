//! Runs the map pipeline in process on one corpus file and prints what it cost:
//! each phase's time, the total to READY, peak RSS, 10-NN preservation (the share of each point's
//! 10 nearest corpus neighbours, by cosine in the full input space, kept among its 10 nearest on
//! the map) and 10-NN label accuracy when labels are given. Scoring is untimed.
//!
//!     embedding-map-bench --corpus X.npy [--labels y.npy] [--repeat 3] [--out map.npy] [map flags]
//!     embedding-map-bench --corpus NEW.npy --ids NEW_IDS.npy --parent MAP.npy --parent-ids IDS.npy ...
//!
//! With `--parent` the run is a refresh starting from that map (as the service's refresh does,
//! including its choice of a fresh layout when most points are new).
//!
//! Prints a table on stderr and one JSON line per run on stdout.

use std::{path::PathBuf, time::Instant};

use clap::Parser;
use embedding_service::{
    corpus::CorpusSource,
    pipeline::{self, MapOutput, MapSettings, ProgressSink, UnitRows, WarmStart, quality},
};
use embeddingmap_proto::v1::Phase;

#[derive(Parser)]
#[command(about = "Time the embedding-map pipeline on a corpus file")]
struct Args {
    /// Corpus: `.npy` float32 matrix or FAISS index; the demo corpus when absent.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Item ids for a `.npy` corpus.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Integer labels, one per row, to score the map by 10-NN label accuracy.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Runs to make; figures are reported per run and as the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Also measures the neighbour search's recall against an exact search (untimed).
    #[arg(long)]
    recall: bool,
    /// Skips the preservation score, whose exact search of the full input grows with N squared
    /// (minutes at 200k x 384).
    #[arg(long)]
    no_preservation: bool,
    /// Writes the last run's map as a float32 N x 2 `.npy`, rows in corpus order.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A parent map (float32 N x 2 `.npy`, as `--out` writes) to refresh from.
    #[arg(long)]
    parent: Option<PathBuf>,
    /// The parent map's ids, one per row (default: row numbers).
    #[arg(long, requires = "parent")]
    parent_ids: Option<PathBuf>,
    #[command(flatten)]
    map: MapSettings,
}

struct Quiet;

impl ProgressSink for Quiet {
    fn phase(&self, _: Phase) {}
    fn iteration(&self, _: u32) {}
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = CorpusSource::from_paths(args.corpus.clone(), args.ids.clone());
    let labels = args.labels.as_ref().map(read_labels).transpose()?;
    let settings = &args.map;
    let recall = if args.recall { Some(quality::knn_recall(source.load()?.vectors, settings)?) } else { None };
    if let Some(recall) = recall {
        eprintln!("neighbour recall against exact search: {recall:.4}");
    }
    let parent = args.parent.as_ref().map(|path| read_parent(path, args.parent_ids.as_ref())).transpose()?;
    let mut totals = Vec::new();
    let mut runs = Vec::new();
    for run in 1..=args.repeat.max(1) {
        let started = Instant::now();
        let corpus = source.load()?;
        let load = started.elapsed();
        let (n, dimensions) = (corpus.len(), corpus.dimensions());
        let start = parent.as_ref().map(|parent| WarmStart::from_parent(parent.iter().copied(), &corpus.ids));
        let rows = UnitRows::new(corpus.vectors);
        let MapOutput { points, parameters, timings } = match start.filter(|start| start.applies(settings)) {
            Some(start) => pipeline::compute_map_from(rows, settings, &Quiet, &start)?,
            None => pipeline::compute_map(rows, settings, &Quiet)?,
        };
        let total = started.elapsed();
        totals.push(total.as_secs_f64());
        let accuracy = labels.as_ref().map(|labels| quality::knn_label_accuracy(&points, labels)).transpose()?;
        let report = serde_json::json!({
            "implementation": "embedding-service",
            "run": run,
            "n": n,
            "dimensions": dimensions,
            "pca_dimensions": parameters.pca_dimensions,
            "knn": parameters.knn.name(),
            "gradient": parameters.gradient.name(),
            "iterations": parameters.iterations,
            "layout": parameters.layout.name(),
            "learning_rate": parameters.learning_rate,
            "final_learning_rate": parameters.final_learning_rate,
            "threads": parameters.threads,
            "seconds": {
                "load": load.as_secs_f64(),
                "normalize": timings.normalize.as_secs_f64(),
                "pca": timings.pca.as_secs_f64(),
                "knn": timings.knn.as_secs_f64(),
                "affinities": timings.affinities.as_secs_f64(),
                "optimize": timings.optimize.as_secs_f64(),
                "total": total.as_secs_f64(),
            },
            "peak_rss_mb": peak_rss_mb(),
            "knn10": accuracy,
            "knn_recall": recall,
        });
        eprintln!(
            "run {run}: n={} load {:.3}s normalize {:.3}s pca {:.3}s knn({}) {:.3}s affinities {:.3}s optimize({}) {:.3}s | total {:.3}s | peak RSS {:.0} MB{}",
            n,
            load.as_secs_f64(),
            timings.normalize.as_secs_f64(),
            timings.pca.as_secs_f64(),
            parameters.knn.name(),
            timings.knn.as_secs_f64(),
            timings.affinities.as_secs_f64(),
            parameters.gradient.name(),
            timings.optimize.as_secs_f64(),
            total.as_secs_f64(),
            peak_rss_mb().unwrap_or(f64::NAN),
            accuracy.map(|a| format!(" | 10-NN accuracy {a:.4}")).unwrap_or_default(),
        );
        if let Some(out) = &args.out {
            write_map(out, &points)?;
        }
        runs.push((report, points));
    }
    // Scored after every run, so the exact search of the full input (the same for every run)
    // stays out of the runs' peak RSS.
    let input_neighbors =
        if args.no_preservation { None } else { Some(quality::input_neighbors(source.load()?.vectors)?) };
    for (mut report, points) in runs {
        if let Some(input) = &input_neighbors {
            let preservation = quality::neighbor_preservation(&points, input)?;
            eprintln!("run {}: 10-NN preservation {preservation:.4}", report["run"]);
            report["preservation10"] = preservation.into();
        }
        println!("{report}");
    }
    totals.sort_by(f64::total_cmp);
    eprintln!("median total over {} run(s): {:.3}s", totals.len(), totals[totals.len() / 2]);
    Ok(())
}

fn read_labels(path: &PathBuf) -> anyhow::Result<Vec<i64>> {
    let bytes = std::fs::read(path)?;
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let labels = match npy.dtype() {
        npyz::DType::Plain(ts) if ts.to_string() == "<i8" => npy.into_vec::<i64>()?,
        npyz::DType::Plain(ts) if ts.to_string() == "<i4" => {
            npy.into_vec::<i32>()?.into_iter().map(i64::from).collect()
        }
        other => anyhow::bail!("labels must be int32 or int64, found {other:?}"),
    };
    Ok(labels)
}

/// A parent map's `(id, position)` points: its `.npy` rows, with ids from `ids` or row numbers.
fn read_parent(path: &PathBuf, ids: Option<&PathBuf>) -> anyhow::Result<Vec<(i64, [f32; 2])>> {
    let bytes = std::fs::read(path)?;
    let values: Vec<f32> = npyz::NpyFile::new(&bytes[..])?.into_vec()?;
    let positions: Vec<[f32; 2]> = values.chunks_exact(2).map(|xy| [xy[0], xy[1]]).collect();
    let ids = match ids {
        Some(ids) => read_labels(ids)?,
        None => (0..positions.len() as i64).collect(),
    };
    anyhow::ensure!(ids.len() == positions.len(), "{} parent ids for {} parent points", ids.len(), positions.len());
    Ok(ids.into_iter().zip(positions).collect())
}

fn write_map(path: &PathBuf, points: &[[f32; 2]]) -> anyhow::Result<()> {
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[points.len() as u64, 2])
        .writer(std::io::BufWriter::new(std::fs::File::create(path)?))
        .begin_nd()?;
    writer.extend(points.iter().flatten().copied())?;
    writer.finish()?;
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
