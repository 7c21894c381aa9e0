//! Labels for the map's clusters, from the items: each cluster's dominant category and the words
//! of its names that tell it apart (frequent in the cluster, rare elsewhere: tf-idf over names).
//! Made once per map and items version, with the joined map.

use std::collections::{BTreeMap, HashMap, HashSet};

use embeddingmap_proto::{api as api_pb, v1 as pb};

/// Words this short, all-digit words and these common ones say nothing about a cluster.
const MIN_WORD_CHARS: usize = 3;
const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "with", "from", "that", "this", "are", "was", "not", "but", "all", "any", "can", "has", "its",
    "into", "over", "than", "then", "their", "there", "these", "they", "which", "will", "you", "your",
];
/// A word labels a cluster only if at least this share of its named points carry it.
const MIN_WORD_SHARE: f64 = 0.1;
const WORDS_PER_LABEL: usize = 2;
/// How much more common in the cluster than across the map a word must be to label it.
const MIN_LIFT: f64 = 2.0;

/// Every level's clusters with labels; `points` in map order, `labels` the items' (name, category).
pub fn label(
    levels: &[pb::ClusterLevel],
    points: &[pb::Point],
    labels: &HashMap<i64, (String, String)>,
) -> Vec<api_pb::MapCluster> {
    // Each point's distinct words, once.
    let words: Vec<HashSet<String>> =
        points.iter().map(|p| labels.get(&p.id).map(|(name, _)| words_of(name)).unwrap_or_default()).collect();
    let named = words.iter().filter(|w| !w.is_empty()).count().max(1) as f64;
    let mut document_frequency: HashMap<&str, usize> = HashMap::new();
    for word in words.iter().flatten() {
        *document_frequency.entry(word).or_default() += 1;
    }
    let mut out = Vec::new();
    for level in levels {
        // Not this map's clusters, or not numbered by position: skipped rather than mislabelled.
        if level.assignment.len() != points.len()
            || level.clusters.iter().enumerate().any(|(index, cluster)| cluster.id as usize != index)
        {
            continue;
        }
        let mut categories: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); level.clusters.len()];
        let mut counts: Vec<HashMap<&str, usize>> = vec![HashMap::new(); level.clusters.len()];
        let mut named_in: Vec<usize> = vec![0; level.clusters.len()];
        for ((point, &cluster), point_words) in points.iter().zip(&level.assignment).zip(&words) {
            let Some(slot) = categories.get_mut(cluster as usize) else { continue };
            if let Some((_, category)) = labels.get(&point.id).filter(|(_, category)| !category.is_empty()) {
                *slot.entry(category.as_str()).or_default() += 1;
            }
            if !point_words.is_empty() {
                named_in[cluster as usize] += 1;
            }
            for word in point_words {
                *counts[cluster as usize].entry(word.as_str()).or_default() += 1;
            }
        }
        for (index, cluster) in level.clusters.iter().enumerate() {
            // The most common category; ties to the first by name, so labels are stable.
            let dominant = categories[index]
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(category, _)| (*category).to_owned());
            let in_cluster = named_in[index].max(1) as f64;
            // The category's own name says nothing more.
            let category_word = dominant.as_deref().map(str::to_lowercase).unwrap_or_default();
            let mut scored: Vec<(f64, &str)> = counts[index]
                .iter()
                .filter(|(word, _)| **word != category_word)
                .filter(|(_, count)| **count as f64 >= MIN_WORD_SHARE * in_cluster && **count >= 2)
                // Over-represented here: at least `MIN_LIFT` times as common as across the map.
                .filter(|(word, count)| {
                    **count as f64 / in_cluster >= MIN_LIFT * document_frequency[*word] as f64 / named
                })
                .map(|(word, count)| {
                    // Squared, so words common across the whole corpus ("return", "value")
                    // lose to the ones that set the cluster apart.
                    let idf = (named / document_frequency[word] as f64).ln();
                    (*count as f64 / in_cluster * idf * idf, *word)
                })
                .filter(|(score, _)| *score > 0.0)
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            let telling: Vec<&str> = scored.iter().take(WORDS_PER_LABEL).map(|(_, word)| *word).collect();
            let label = match (&dominant, telling.is_empty()) {
                (Some(category), false) => format!("{category}: {}", telling.join(", ")),
                (Some(category), true) => category.clone(),
                (None, false) => telling.join(", "),
                (None, true) => format!("cluster {}", cluster.id),
            };
            out.push(api_pb::MapCluster {
                level: level.level,
                id: cluster.id,
                x: cluster.x,
                y: cluster.y,
                size: cluster.size,
                label,
                category: dominant,
            });
        }
    }
    out
}

fn words_of(name: &str) -> HashSet<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() >= MIN_WORD_CHARS && !word.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_lowercase)
        .filter(|word| !STOP_WORDS.contains(&word.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_named_by_their_category_and_telling_words() {
        let points: Vec<pb::Point> = (0..9).map(|id| pb::Point { id, x: 0.0, y: 0.0 }).collect();
        let mut labels = HashMap::new();
        for (id, name, category) in [
            (0, "asyncio event loop", "asyncio"),
            (1, "asyncio task loop", "asyncio"),
            (2, "asyncio stream", "asyncio"),
            (3, "pandas frame join", "pandas"),
            (4, "pandas frame merge", "pandas"),
            (6, "numpy array sum", "numpy"),
            (7, "numpy array mean", "numpy"),
            (8, "numpy dot", "numpy"),
        ] {
            labels.insert(id, (name.to_owned(), category.to_owned()));
        }
        let level = pb::ClusterLevel {
            level: 0,
            clusters: vec![
                pb::Cluster { id: 0, x: 1.0, y: 2.0, size: 3 },
                pb::Cluster { id: 1, x: 5.0, y: 6.0, size: 3 },
                pb::Cluster { id: 2, x: 9.0, y: 9.0, size: 3 },
            ],
            assignment: vec![0, 0, 0, 1, 1, 1, 2, 2, 2],
        };
        let clusters = label(&[level], &points, &labels);
        assert_eq!(clusters[0].label, "asyncio: loop");
        assert_eq!(clusters[0].category.as_deref(), Some("asyncio"));
        assert_eq!(clusters[1].label, "pandas: frame");
        assert_eq!((clusters[1].x, clusters[1].size), (5.0, 3), "point 5 has no item and still counts");
    }
}
