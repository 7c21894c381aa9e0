pub(super) mod fft;
pub(super) mod interpolation;
pub(super) mod spectral;
pub(super) mod vptree;

use std::{
    iter::Sum,
    ops::{Add, AddAssign, DivAssign, MulAssign, SubAssign},
};

use rayon::{
    iter::{
        IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, IntoParallelRefMutIterator,
        ParallelIterator,
    },
    slice::{ParallelSlice, ParallelSliceMut},
};

use rand_distr::{Distribution, Normal};

use num_traits::{AsPrimitive, Float, float::FloatCore};

use rustfft::FftNum;

/// Adaptive-gain constants shared by the exact and approximate updates: the gain is
/// bumped by `GAIN_INCREMENT` when the gradient and velocity disagree in sign,
/// decayed by `GAIN_DECAY` when they agree, floored at `MIN_GAIN`, and capped at `MAX_GAIN`.
const GAIN_INCREMENT: f64 = 0.2;
const GAIN_DECAY: f64 = 0.8;
const MIN_GAIN: f64 = 0.01;
const MAX_GAIN: f64 = 2.0;

/// Per-epoch scalars for the fused [`gradient_descent_step`].
pub(super) struct GradientStep<T> {
    /// Learning rate.
    pub learning_rate: T,
    /// Momentum coefficient.
    pub momentum: T,
    /// Reciprocal of the `Q` normalization term `Z`.
    pub inverse_norm: T,
    /// Patched: longest update a sample may take in one epoch (openTSNE's `max_step_norm`).
    pub max_step_norm: Option<T>,
}

/// Checks whether the perplexity is too large for the number of samples.
///
/// # Arguments
///
/// * `perplexity` - perplexity.
///
/// * `n_samples` - number of data samples.
///
/// # Panics
///
/// If the perplexity is too large.
#[inline]
pub(super) fn check_perplexity<T: Float + AsPrimitive<usize>>(perplexity: &T, n_samples: &usize) {
    if n_samples - 1 < 3 * perplexity.as_() {
        panic!("error: the provided perplexity is too large for the number of data points.\n");
    }
}

/// Patched: length of the fixed chunks that parallel float reductions are split into.
///
/// Rayon's own `sum`/`reduce` split work where threads steal it, so the order of float additions,
/// and with it the last bits of the result, changed from run to run. Summing fixed chunks in
/// parallel and then the chunk totals in order gives the same bits on every run and for any
/// thread count.
pub(crate) const REDUCTION_CHUNK: usize = 4096;

/// Sum of `values`, parallel and deterministic (see [`REDUCTION_CHUNK`]).
pub(crate) fn ordered_sum<T: Float + Send + Sync + Sum>(values: &[T]) -> T {
    let partials: Vec<T> = values.par_chunks(REDUCTION_CHUNK).map(|chunk| chunk.iter().copied().sum::<T>()).collect();
    partials.into_iter().sum()
}

/// Prepares the buffers necessary to the computation. Allocates memory freed by `clear_buffers`.
///
/// # Arguments
///
/// * `y` - embedding.
///
/// * `dy` - gradient.
///
/// * `uy` - momentum buffer.
///
/// * `gains` - gains.
pub(super) fn prepare_buffers<T: Float + Send + Sync>(
    y: &mut Vec<T>,
    dy: &mut Vec<T>,
    uy: &mut Vec<T>,
    gains: &mut Vec<T>,
    grad_entries: usize,
) {
    // Prepares the buffers.
    y.resize(grad_entries, T::zero()); // Embeddings.
    dy.resize(grad_entries, T::zero()); // Gradient.
    uy.resize(grad_entries, T::zero()); // Momentum buffer.
    gains.resize(grad_entries, T::one()); // Gains.
}

/// Empties the buffers after the termination of the algorithm. Frees memory allocated by
/// `prepare_buffers`.
///
/// # Arguments
///
/// * `dy` - gradient.
///
/// * `uy` - momentum buffer.
///
/// * `gains` - gains.
pub(super) fn clear_buffers<T: Float + Send + Sync>(dy: &mut Vec<T>, uy: &mut Vec<T>, gains: &mut Vec<T>) {
    // Empties the buffers.
    *dy = Vec::new(); // Gradient.
    *uy = Vec::new(); // Momentum buffer.
    *gains = Vec::new(); // Gains.
}

/// Returns the source of randomness used by the crate. On targets where an entropy
/// source is available this is the thread local generator. This includes
/// wasm32-unknown-unknown when the wasm_js feature is enabled, in which case entropy
/// comes from the JavaScript host through getrandom. Otherwise, on
/// wasm32-unknown-unknown no entropy source exists, so a small deterministic generator
/// with a fixed seed is used instead.
#[cfg(any(not(all(target_arch = "wasm32", target_os = "unknown")), feature = "wasm_js"))]
pub(super) fn make_rng() -> impl rand::Rng {
    rand::rng()
}

/// Returns the source of randomness used by the crate. On targets where an entropy
/// source is available this is the thread local generator. This includes
/// wasm32-unknown-unknown when the wasm_js feature is enabled, in which case entropy
/// comes from the JavaScript host through getrandom. Otherwise, on
/// wasm32-unknown-unknown no entropy source exists, so a small deterministic generator
/// with a fixed seed is used instead.
#[cfg(all(target_arch = "wasm32", target_os = "unknown", not(feature = "wasm_js")))]
pub(super) fn make_rng() -> impl rand::Rng {
    use rand::SeedableRng;
    rand::rngs::SmallRng::seed_from_u64(0x6268_7473_6e65)
}

/// Random initializes the embedding sampling from a normal distribution with mean 0 and sigma 1e-4.
///
/// # Arguments
///
/// `y` - embedding.
pub(super) fn random_init<T: Float + Send + Sync + Copy>(y: &mut [T]) {
    let distr = Normal::new(0.0, 1e-4).unwrap();
    let mut rng = make_rng();
    y.iter_mut().for_each(|el| *el = T::from(distr.sample(&mut rng)).unwrap());
}

/// Computes a squared distance matrix. Computes only the upper triangular entries, excluding the
/// diagonal. The matrix is symmetrized after to get the full distance matrix.
///
/// # Arguments
///
/// * `distances` - distance matrix to fill.
///
/// * `f` - distance function.
///
/// * `g` - a closure that given an index returns the associated sample.
///
/// * `n_samples` - total number of samples.
pub(super) fn compute_pairwise_distance_matrix<'a, T, U, F, G>(distances: &mut [T], f: F, g: G, n_samples: usize)
where
    T: Float + Send + Sync,
    U: 'a + Send + Sync + ?Sized,
    F: Fn(&U, &U) -> T + Sync + Send,
    G: Fn(&usize) -> &'a U + Sync + Send,
{
    // Parallelize over rows and compute only the upper triangular entries, excluding the diagonal.
    distances.par_chunks_mut(n_samples).enumerate().for_each(|(i, distances_row)| {
        let ith = g(&i);
        for (j, d) in distances_row.iter_mut().enumerate().skip(i + 1) {
            *d = f(ith, g(&j));
        }
    });

    // Symmetrizes the matrix. Effectively filling it.
    for i in 0..n_samples {
        for j in (i + 1)..n_samples {
            distances[j * n_samples + i] = distances[i * n_samples + j];
        }
    }
}

/// Performs a binary search over the real numbers looking for the optimal bandwidth of the
/// Gaussian kernel relative to the condition distribution `p_values_row`.
///
/// # Arguments
///
/// * `p_values_rows` - conditional distribution relative to the sample.
///
/// * `distances_row` - row of the distance matrix relative to the sample.
///
/// * `perplexity` - given perplexity value.
pub(super) fn search_beta<T>(p_values_row: &mut [T], distances_row: &[T], perplexity: &T)
where
    T: Send + Sync + Copy + Float + Sum + MulAssign + DivAssign,
{
    let mut found = false;
    let mut beta: T = T::one();
    let mut min_beta: T = -T::max_value();
    let mut max_beta: T = T::max_value();
    let tolerance: T = T::from(1e-5).unwrap();
    let mut iteration = 0;
    let mut p_values_row_sum: T = T::zero();

    let two = T::from(2.0).unwrap();

    debug_assert_eq!(p_values_row.len(), distances_row.len());

    while !found && iteration < 200 {
        // Here the values of a single row are computed.
        p_values_row.iter_mut().zip(distances_row.iter()).for_each(|(p, d)| {
            *p = (-beta * (*d * *d)).exp();
        });

        // After that the row is normalized.
        p_values_row_sum = p_values_row.iter().copied().sum::<T>() + T::min_positive_value();

        // The conditional distribution's entropy is needed to find the optimal value
        // for beta, i.e. the bandwidth of the Gaussian kernel.
        let mut entropy =
            p_values_row.iter().zip(distances_row.iter()).fold(T::zero(), |acc, (p, d)| acc + beta * *p * (*d * *d));
        entropy = entropy / p_values_row_sum + p_values_row_sum.ln();

        // It evaluates whether the entropy is within the tolerance level.
        let entropy_difference = entropy - perplexity.ln();

        if entropy_difference < tolerance && -entropy_difference < tolerance {
            found = true;
        } else {
            if entropy_difference > T::zero() {
                min_beta = beta;

                if max_beta == T::max_value() || max_beta == -T::max_value() {
                    beta *= two;
                } else {
                    beta = (beta + max_beta) / two;
                }
            } else {
                max_beta = beta;

                if min_beta == -T::max_value() || min_beta == T::max_value() {
                    beta /= two;
                } else {
                    beta = (beta + min_beta) / two;
                }
            }
            // Checks for overflows.
            if beta.is_infinite() && beta.is_sign_positive() {
                beta = T::max_value()
            }
            if beta.is_infinite() && beta.is_sign_negative() {
                beta = -T::max_value()
            }
        }
        iteration += 1;
    }

    // Row normalization.
    p_values_row.iter_mut().for_each(|p| *p /= p_values_row_sum + T::epsilon());
}

/// Normalizes the P values.
///
/// # Arguments
///
/// * `p_values` - values of the P distribution.
///
/// * `early_exaggeration` - factor the P distribution is multiplied by during the early phase.
pub(super) fn normalize_p_values<T: Float + Send + Sync + MulAssign + Sum>(p_values: &mut [T], early_exaggeration: T) {
    // Patched: fixed-chunk sum (was rayon's `sum`), the same bits on every run.
    let p_values_sum: T = ordered_sum(p_values);
    // Fold the normalization and the early-exaggeration factor into one reciprocal, so the hot pass
    // is a single multiply per value rather than a divide and a multiply.
    let scale = early_exaggeration / (p_values_sum + T::epsilon());
    p_values.par_iter_mut().for_each(|p| *p *= scale);
}

/// Symmetrizes a sparse P matrix.
///
/// Patched: rows are built in parallel from each sample's own neighbour list and its transpose
/// (the samples that list it, ascending), where the crate made two sequential passes with a
/// binary search into another sample's row per entry. The result is the crate's, entry for
/// entry and in the same order within each row (the attractive forces sum a row in that
/// order): row `r` holds the samples `t < r` that list `r`, then `r`'s own neighbours in
/// ascending order less those `j < r` that list `r` back (already in the first part), then the
/// samples `t > r` that list `r` but are not its neighbours. A pair listed both ways gets
/// `(p_rj + p_jr) / 2`, any other `p / 2`.
///
/// # Arguments
///
/// * `p_columns` - for each sample, the indices of its nearest neighbors found with the vantage point tree.
///
/// * `p_values` - P distribution values.
///
/// * `n_samples` - number of samples.
///
/// * `n_neighbors` - number of nearest neighbors to consider.
pub(super) fn symmetrize_sparse_matrix<T>(
    sym_p_rows: &mut Vec<usize>,
    sym_p_columns: &mut Vec<u32>,
    mut p_columns: Vec<u32>,
    p_values: &mut Vec<T>,
    n_samples: usize,
    n_neighbors: &usize,
) where
    T: Float + Add + DivAssign + Send + Sync + MulAssign,
{
    let n_neighbors = *n_neighbors;
    // Sort each neighbor row so the lookups below can binary-search. Rows are
    // independent and columns unique within a row, hence parallel and unstable.
    p_columns.par_chunks_mut(n_neighbors).zip(p_values.par_chunks_mut(n_neighbors)).for_each_init(
        Vec::<(u32, T)>::new,
        |row, (cols, vals)| {
            row.clear();
            row.extend(cols.iter().copied().zip(vals.iter().copied()));
            row.sort_unstable_by_key(|(c, _)| *c);
            for (j, &(col, val)) in row.iter().enumerate() {
                cols[j] = col;
                vals[j] = val;
            }
        },
    );

    // The transpose: for each sample the samples listing it, ascending, with the value they
    // give it. Filled in sample order, which sorts every list.
    let mut in_rows = vec![0usize; n_samples + 1];
    for &col in &p_columns {
        in_rows[col as usize + 1] += 1;
    }
    for n in 0..n_samples {
        in_rows[n + 1] += in_rows[n];
    }
    let mut in_columns = vec![0u32; p_columns.len()];
    let mut in_values = vec![T::zero(); p_columns.len()];
    let mut next = in_rows[..n_samples].to_vec();
    for (t, (cols, vals)) in p_columns.chunks(n_neighbors).zip(p_values.chunks(n_neighbors)).enumerate() {
        for (&col, &val) in cols.iter().zip(vals) {
            let slot = &mut next[col as usize];
            in_columns[*slot] = t as u32;
            in_values[*slot] = val;
            *slot += 1;
        }
    }

    // Row `r`'s entries in order, as (column, value before halving).
    let for_each_entry = |r: usize, emit: &mut dyn FnMut(u32, T)| {
        let own = &p_columns[r * n_neighbors..(r + 1) * n_neighbors];
        let own_values = &p_values[r * n_neighbors..(r + 1) * n_neighbors];
        let incoming = &in_columns[in_rows[r]..in_rows[r + 1]];
        let incoming_values = &in_values[in_rows[r]..in_rows[r + 1]];
        let split = incoming.partition_point(|&t| (t as usize) < r);
        for (&t, &value) in incoming[..split].iter().zip(&incoming_values[..split]) {
            match own.binary_search(&t) {
                Ok(at) => emit(t, value + own_values[at]),
                Err(_) => emit(t, value),
            }
        }
        for (&j, &value) in own.iter().zip(own_values) {
            match incoming.binary_search(&j) {
                Ok(_) if (j as usize) < r => {}
                Ok(at) => emit(j, value + incoming_values[at]),
                Err(_) => emit(j, value),
            }
        }
        for (&t, &value) in incoming[split..].iter().zip(&incoming_values[split..]) {
            if own.binary_search(&t).is_err() {
                emit(t, value);
            }
        }
    };

    let row_counts: Vec<usize> = (0..n_samples)
        .into_par_iter()
        .map(|r| {
            let mut count = 0;
            for_each_entry(r, &mut |_, _| count += 1);
            count
        })
        .collect();
    let mut sym_row_p: Vec<usize> = vec![0; n_samples + 1];
    for n in 0..n_samples {
        sym_row_p[n + 1] = sym_row_p[n] + row_counts[n];
    }
    let total = sym_row_p[n_samples];
    let mut sym_col_p: Vec<u32> = vec![0; total];
    let mut sym_val_p: Vec<T> = vec![T::zero(); total];

    // One output slice per row, filled in parallel.
    let mut rows: Vec<(&mut [u32], &mut [T])> = Vec::with_capacity(n_samples);
    let (mut cols_rest, mut vals_rest) = (sym_col_p.as_mut_slice(), sym_val_p.as_mut_slice());
    for &count in &row_counts {
        let (cols, cols_tail) = cols_rest.split_at_mut(count);
        let (vals, vals_tail) = vals_rest.split_at_mut(count);
        rows.push((cols, vals));
        (cols_rest, vals_rest) = (cols_tail, vals_tail);
    }
    let half = T::from(0.5).unwrap();
    rows.into_par_iter().enumerate().for_each(|(r, (cols, vals))| {
        let mut at = 0;
        for_each_entry(r, &mut |col, value| {
            cols[at] = col;
            vals[at] = value * half;
            at += 1;
        });
    });

    *p_values = sym_val_p;
    *sym_p_rows = sym_row_p;
    *sym_p_columns = sym_col_p;
}

/// Updates the embedding.
///
/// # Arguments
///
/// * `y` - embedding.
///
/// * `dy` - tSNE gradient.
///
/// * `uy` - momentum buffer.
///
/// * `gains` - gains.
///
/// * `learning_rate` - learning rate.
///
/// * `momentum` - momentum coefficient.
pub(super) fn update_solution<T>(y: &mut [T], dy: &[T], uy: &mut [T], gains: &mut [T], learning_rate: &T, momentum: &T)
where
    T: Float + Send + Sync + AddAssign,
{
    let (gain_increment, gain_decay, min_gain, max_gain) = gain_constants::<T>();

    y.par_iter_mut().zip(dy.par_iter()).zip(uy.par_iter_mut()).zip(gains.par_iter_mut()).for_each(
        |(((y_el, dy_el), uy_el), gains_el)| {
            *gains_el =
                if dy_el.signum() != uy_el.signum() { *gains_el + gain_increment } else { *gains_el * gain_decay };
            if *gains_el < min_gain {
                *gains_el = min_gain;
            }
            if *gains_el > max_gain {
                *gains_el = max_gain;
            }
            *uy_el = *momentum * *uy_el - *learning_rate * *gains_el * *dy_el;
            *y_el += *uy_el
        },
    );
}

/// Fused adaptive-gain gradient-descent step shared by the Barnes-Hut and FIt-SNE
/// optimization loops.
///
///
/// # Arguments
///
/// * `y` - embedding, updated in place.
///
/// * `positive_forces` - attractive forces, one row of `D` per sample.
///
/// * `negative_forces` - repulsive forces, one row of `D` per sample.
///
/// * `uy` - momentum (velocity) buffer.
///
/// * `gains` - per-coordinate adaptive gains.
///
/// * `step` - the per-epoch learning rate, momentum, and `1 / Z` scalars.
pub(super) fn gradient_descent_step<T, const D: usize>(
    y: &mut [T],
    positive_forces: &[T],
    negative_forces: &[T],
    uy: &mut [T],
    gains: &mut [T],
    step: GradientStep<T>,
) where
    T: Float + Send + Sync + AddAssign,
{
    let GradientStep { learning_rate, momentum, inverse_norm, max_step_norm } = step;
    let (gain_increment, gain_decay, min_gain, max_gain) = gain_constants::<T>();

    y.par_chunks_mut(D)
        .with_min_len(crate::PARALLEL_CODE_THRESHOLD)
        .zip(positive_forces.par_chunks(D))
        .zip(negative_forces.par_chunks(D))
        .zip(uy.par_chunks_mut(D))
        .zip(gains.par_chunks_mut(D))
        .for_each(|((((y_sample, positive), negative), uy_sample), gains_sample)| {
            positive.iter().zip(negative.iter()).zip(uy_sample.iter_mut()).zip(gains_sample.iter_mut()).for_each(
                |(((pf, nf), uy_el), gain)| {
                    let gradient = *pf - *nf * inverse_norm;
                    *gain =
                        if gradient.signum() != uy_el.signum() { *gain + gain_increment } else { *gain * gain_decay };
                    if *gain < min_gain {
                        *gain = min_gain;
                    }
                    if *gain > max_gain {
                        *gain = max_gain;
                    }
                    *uy_el = momentum * *uy_el - learning_rate * *gain * gradient;
                },
            );
            // Patched: clip the step's length, so a high learning rate cannot fling a
            // sample far off the map (the clipped step is also the momentum carried on).
            if let Some(max) = max_step_norm {
                let norm = uy_sample.iter().map(|&u| u * u).fold(T::zero(), |a, b| a + b).sqrt();
                if norm > max {
                    let scale = max / norm;
                    uy_sample.iter_mut().for_each(|u| *u = *u * scale);
                }
            }
            y_sample.iter_mut().zip(uy_sample.iter()).for_each(|(y_el, &u)| *y_el += u);
        });
}

/// Adjust the P distribution values to the original ones in parallel.
///
/// # Arguments
///
/// * `p_values` - P distribution.
///
/// * `early_exaggeration` - factor the early phase multiplied the P distribution by, undone here.
pub(super) fn stop_lying<T: Float + Send + Sync + MulAssign>(p_values: &mut [T], early_exaggeration: T) {
    let scale = early_exaggeration.recip();
    p_values.par_iter_mut().for_each(|p| *p *= scale);
}

/// Recenters `y` to zero mean. The per-dimension sums and the subtraction are both parallel passes.
pub(super) fn zero_mean<T, const D: usize>(y: &mut [T], n_samples: usize)
where
    T: Float + Send + Sync + Copy + AddAssign + DivAssign + SubAssign,
{
    // Patched: per-chunk column sums combined in chunk order (was rayon's `fold`/`reduce`): the
    // same bits for any thread count.
    let partials: Vec<[T; D]> = y
        .par_chunks(REDUCTION_CHUNK * D)
        .map(|chunk| {
            let mut totals = [T::zero(); D];
            for sample in chunk.chunks_exact(D) {
                totals.iter_mut().zip(sample.iter()).for_each(|(total, el)| *total += *el);
            }
            totals
        })
        .collect();
    let mut means = [T::zero(); D];
    for partial in &partials {
        means.iter_mut().zip(partial.iter()).for_each(|(total, el)| *total += *el);
    }
    let n_samples = T::from(n_samples).unwrap();
    means.iter_mut().for_each(|mean| *mean /= n_samples);

    y.par_chunks_mut(D).for_each(|sample| {
        sample.iter_mut().zip(means.iter()).for_each(|(el, mean)| *el -= *mean);
    });
}

/// Evaluate t-SNE cost function exactly.
///
/// # Arguments
///
/// * `p_values` - values of the P distribution.
///
/// * `y` - current embedding.
///
/// * `n_samples` - number of samples in the embedding;
pub(crate) fn evaluate_error<T, const D: usize>(p_values: &[T], y: &[T], n_samples: usize) -> T
where
    T: Float + Send + Sync + AddAssign + Add + DivAssign + Sum,
{
    let mut distances: Vec<T> = vec![T::zero(); n_samples * n_samples];
    let (points, _) = y.as_chunks::<D>();
    compute_pairwise_distance_matrix(
        &mut distances,
        |a: &[T; D], b: &[T; D]| a.iter().zip(b.iter()).map(|(aa, bb)| (*aa - *bb).powi(2)).sum::<T>(),
        |i| &points[*i],
        n_samples,
    );

    // Q's normalizer Z is the sum of the unnormalized Student-t affinities `1 / (1 + d)`.
    // Fold it straight out of the distance matrix so the full n^2 q_values buffer never
    // has to be materialized.
    let inverse_q_sum = distances.par_iter().map(|d| (T::one() + *d).recip()).sum::<T>().recip();

    // Kullback-Leibler divergence, reconstructing each normalized q on the fly.
    p_values
        .par_iter()
        .zip(distances.par_iter())
        .fold(
            || T::zero(),
            |c, (p, d)| {
                let q = (T::one() + *d).recip() * inverse_q_sum;
                c + *p * ((*p + T::min_positive_value()) / (q + T::min_positive_value())).ln()
            },
        )
        .sum::<T>()
}

/// Evaluate t-SNE cost function approximately.
///
/// # Arguments
///
/// * `p_rows` - rows of the sparse, symmetric P distribution matrix.
///
/// * `p_columns` - columns of the sparse, symmetric P distribution matrix.
///
/// * `p_values` - sparse symmetric P distribution matrix.
///
/// * `y` - current embedding.
///
/// * `n_samples` - number of samples.
///
/// * `theta` - threshold for the Barnes-Hut algorithm.
pub(crate) fn evaluate_error_approximately<T, const D: usize>(
    p_rows: &[usize],
    p_columns: &[u32],
    p_values: &[T],
    y: &[T],
    n_samples: usize,
    theta: T,
) -> T
where
    T: Float + FloatCore + Send + Sync + Sum + AddAssign + SubAssign + MulAssign + DivAssign,
    barnes_hut_tree::Dim<D>: barnes_hut_tree::Morton<D>,
{
    // Get estimate of normalization term.
    let q_sum = {
        let arena = barnes_hut_tree::BarnesHutTree::<
            T,
            <barnes_hut_tree::Dim<D> as barnes_hut_tree::Morton<D>>::Word,
            D,
        >::new_uniform(y);
        let theta_sq = theta * theta;
        let mut q_sums: Vec<T> = vec![T::zero(); n_samples];

        q_sums.par_iter_mut().enumerate().for_each(|(index, sum)| {
            // Local scratch: the repulsive forces are not needed here, only their q_sum.
            let mut negative_forces = [T::zero(); D];
            let mut stack = <barnes_hut_tree::Dim<D> as barnes_hut_tree::Morton<D>>::empty_stack();
            arena.compute_non_edge_forces(index, theta_sq, y, &mut negative_forces, sum, stack.as_mut());
        });

        q_sums.par_iter().map(|sum| *sum).sum::<T>()
    };
    sparse_kl_divergence::<T, D>(p_rows, p_columns, p_values, y, n_samples, Float::recip(q_sum))
}

/// Evaluate the t-SNE cost for an interpolation (FIt-SNE) fit.
///
/// Mirrors [`evaluate_error_approximately`] but draws the `Q` normalizer `Z` from
/// the same FFT interpolation the fit used for its repulsive forces, rather than a
/// Barnes-Hut tree, so the reported divergence matches the optimized objective.
///
/// # Arguments
///
/// * `p_rows` - rows of the sparse, symmetric P distribution matrix.
///
/// * `p_columns` - columns of the sparse, symmetric P distribution matrix.
///
/// * `p_values` - sparse symmetric P distribution values.
///
/// * `y` - current embedding.
///
/// * `n_samples` - number of samples.
pub(crate) fn evaluate_error_interpolated<T, const D: usize>(
    p_rows: &[usize],
    p_columns: &[u32],
    p_values: &[T],
    y: &[T],
    n_samples: usize,
) -> T
where
    T: Float + FftNum + Send + Sync + Sum + AsPrimitive<usize> + AddAssign + SubAssign + MulAssign + DivAssign,
{
    // Reuse the optimizer's estimator for Z; the forces themselves are discarded.
    let q_sum = {
        let mut interpolant = interpolation::Interpolant::<T, D>::new();
        let mut scratch_forces = vec![T::zero(); n_samples * D];
        let mut q_sum = T::zero();
        interpolant.repulsive_forces(y, n_samples, &mut scratch_forces, &mut q_sum);

        q_sum
    };

    sparse_kl_divergence::<T, D>(p_rows, p_columns, p_values, y, n_samples, q_sum.recip())
}

/// Sums the sparse t-SNE Kullback-Leibler divergence over the symmetric `P` graph,
/// given the reciprocal of the `Q` normalizer.
///
/// # Arguments
///
/// * `p_rows` - rows of the sparse, symmetric P distribution matrix.
///
/// * `p_columns` - columns of the sparse, symmetric P distribution matrix.
///
/// * `p_values` - sparse symmetric P distribution values.
///
/// * `y` - current embedding.
///
/// * `n_samples` - number of samples.
///
/// * `inverse_q_sum` - reciprocal of the `Q` normalization term `Z`.
fn sparse_kl_divergence<T, const D: usize>(
    p_rows: &[usize],
    p_columns: &[u32],
    p_values: &[T],
    y: &[T],
    n_samples: usize,
    inverse_q_sum: T,
) -> T
where
    T: Float + Send + Sync + Sum + AddAssign,
{
    let mut partials: Vec<T> = vec![T::zero(); n_samples];

    partials.par_iter_mut().enumerate().for_each(|(index, cost)| {
        let sample_a = &y[index * D..(index + 1) * D];
        for &column in &p_columns[p_rows[index]..p_rows[index + 1]] {
            let column = column as usize;
            let sample_b = &y[column * D..(column + 1) * D];

            let mut q = sample_a.iter().zip(sample_b.iter()).map(|(a, b)| (*a - *b).powi(2)).sum::<T>();
            q = (T::one() + q).recip() * inverse_q_sum;

            // Kullback-Leibler divergence.
            *cost +=
                p_values[index] * ((p_values[index] + T::min_positive_value()) / (q + T::min_positive_value())).ln();
        }
    });

    partials.par_iter().map(|partial| *partial).sum::<T>()
}

/// The four adaptive-gain constants converted to `T`, computed once per update pass.
#[inline]
fn gain_constants<T: Float>() -> (T, T, T, T) {
    (
        T::from(GAIN_INCREMENT).unwrap(),
        T::from(GAIN_DECAY).unwrap(),
        T::from(MIN_GAIN).unwrap(),
        T::from(MAX_GAIN).unwrap(),
    )
}

/// Accumulates the edge (attractive) forces on point `index` from its sparse P matrix neighbors
/// into `positive_forces_row`. A free function over the embedding and the P arrays: the attractive
/// pass reads point coordinates directly and never touches the tree.
///
/// Patched: the edges are taken `LANES` at a time: the neighbours' displacements are gathered
/// into small arrays, then distances, factors and forces are computed lane by lane over them, in
/// `LANES` independent partial sums. The gather cannot be vectorized, but the arithmetic then can
/// (a float sum in one accumulator cannot, since reordering it changes the result); this loop is
/// most of a FIt-SNE iteration's time. A short last group is padded with the point itself at
/// P = 0, which adds nothing. The partial sums are added in a fixed order, so the result stays
/// the same on every run.
pub(crate) fn compute_edge_forces<T, const D: usize>(
    index: usize,
    y: &[T],
    p_rows: &[usize],
    p_columns: &[u32],
    p_values: &[T],
    positive_forces_row: &mut [T],
) where
    T: Float + AddAssign,
{
    const LANES: usize = 8;
    let (y_chunks, _) = y.as_chunks::<D>();
    let sample = y_chunks[index];
    let entries = p_rows[index]..p_rows[index + 1];
    let (column_groups, column_tail) = p_columns[entries.clone()].as_chunks::<LANES>();
    let (value_groups, value_tail) = p_values[entries].as_chunks::<LANES>();

    let mut sums = [[T::zero(); LANES]; D];
    let mut add_group = |columns: &[u32; LANES], values: &[T; LANES]| {
        let mut deltas = [[T::zero(); LANES]; D];
        for lane in 0..LANES {
            let other_sample = y_chunks[columns[lane] as usize];
            for axis in 0..D {
                deltas[axis][lane] = sample[axis] - other_sample[axis];
            }
        }
        let mut distances = [T::one(); LANES];
        for axis_deltas in &deltas {
            for lane in 0..LANES {
                distances[lane] += axis_deltas[lane] * axis_deltas[lane];
            }
        }
        let mut factors = [T::zero(); LANES];
        for lane in 0..LANES {
            factors[lane] = values[lane] / distances[lane];
        }
        for (axis_sums, axis_deltas) in sums.iter_mut().zip(&deltas) {
            for lane in 0..LANES {
                axis_sums[lane] += factors[lane] * axis_deltas[lane];
            }
        }
    };
    for (columns, values) in column_groups.iter().zip(value_groups) {
        add_group(columns, values);
    }
    if !column_tail.is_empty() {
        let mut columns = [index as u32; LANES];
        let mut values = [T::zero(); LANES];
        columns[..column_tail.len()].copy_from_slice(column_tail);
        values[..value_tail.len()].copy_from_slice(value_tail);
        add_group(&columns, &values);
    }
    for (axis, axis_sums) in sums.iter().enumerate() {
        positive_forces_row[axis] += axis_sums.iter().fold(T::zero(), |total, &lane| total + lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's sequential symmetrization, kept as the reference the parallel one must match
    /// entry for entry.
    #[allow(clippy::all)]
    fn crate_symmetrize<T>(
        sym_p_rows: &mut Vec<usize>,
        sym_p_columns: &mut Vec<u32>,
        mut p_columns: Vec<u32>,
        p_values: &mut Vec<T>,
        n_samples: usize,
        n_neighbors: &usize,
    ) where
        T: Float + Add + DivAssign + Send + Sync + MulAssign,
    {
        // Sort each neighbor row so the lookups below can binary-search. Rows are
        // independent and columns unique within a row, hence parallel and unstable.
        p_columns.par_chunks_mut(*n_neighbors).zip(p_values.par_chunks_mut(*n_neighbors)).for_each_init(
            Vec::<(u32, T)>::new,
            |row, (cols, vals)| {
                row.clear();
                row.extend(cols.iter().copied().zip(vals.iter().copied()));
                row.sort_unstable_by_key(|(c, _)| *c);
                for (j, &(col, val)) in row.iter().enumerate() {
                    cols[j] = col;
                    vals[j] = val;
                }
            },
        );

        // Neighbor indices are stored as u32 to halve the index memory at large n; `col` reads one as a
        // usize wherever it is used to index into a buffer.
        let col = |i: usize| p_columns[i] as usize;
        // Each entry of row_counts corresponds to the number of elements for each corresponding row of
        // the symmetric sparse final P matrix.
        let mut row_counts: Vec<usize> = vec![0; n_samples];
        // This sparse and symmetric matrix, due to the nature of the joint probability distribution P,
        // has possibly less entries than the current buffer p_values. In order to construct such a
        // sparse representation, the number of elements contained in each row is needed.
        // Recall that each i-th row corresponds to the joint distribution of the i-th sample.
        let p_rows = |i| i * n_neighbors;

        for n in 0..n_samples {
            for i in p_rows(n)..p_rows(n + 1) {
                row_counts[n] += 1;
                // Binary-search whether `n` appears in the neighbor list of `col(i)`.
                let neighbor_row = &p_columns[p_rows(col(i))..p_rows(col(i) + 1)];
                if neighbor_row.binary_search(&(n as u32)).is_err() {
                    row_counts[col(i)] += 1;
                }
            }
        }

        let total: usize = row_counts.iter().sum();

        let mut sym_row_p: Vec<usize> = vec![0; n_samples + 1];
        let mut sym_col_p: Vec<u32> = vec![0; total];
        let mut sym_val_p: Vec<T> = vec![T::zero(); total];

        sym_row_p[0] = 0;
        for _n in 0..n_samples {
            sym_row_p[_n + 1] = sym_row_p[_n] + row_counts[_n];
        }

        let mut offset: Vec<usize> = vec![0; n_samples];

        for _n in 0..n_samples {
            for i in p_rows(_n)..p_rows(_n + 1) {
                // Binary-search whether `_n` appears in the neighbor list of `col(i)`.
                let neighbor_row = &p_columns[p_rows(col(i))..p_rows(col(i) + 1)];
                let present = neighbor_row.binary_search(&(_n as u32));

                if let Ok(m_offset) = present {
                    // Make sure we do not add elements twice.
                    if _n <= col(i) {
                        sym_col_p[sym_row_p[_n] + offset[_n]] = p_columns[i];
                        sym_col_p[sym_row_p[col(i)] + offset[col(i)]] = _n as u32;
                        let m = p_rows(col(i)) + m_offset;
                        sym_val_p[sym_row_p[_n] + offset[_n]] = p_values[i] + p_values[m];
                        sym_val_p[sym_row_p[col(i)] + offset[col(i)]] = p_values[i] + p_values[m];
                    }
                } else {
                    // If (col_P[i], n) is not present, there is no addition involved.
                    sym_col_p[sym_row_p[_n] + offset[_n]] = p_columns[i];
                    sym_col_p[sym_row_p[col(i)] + offset[col(i)]] = _n as u32;
                    sym_val_p[sym_row_p[_n] + offset[_n]] = p_values[i];
                    sym_val_p[sym_row_p[col(i)] + offset[col(i)]] = p_values[i];
                }
                // Update offsets.
                if present.is_err() || _n <= col(i) {
                    offset[_n] += 1;
                    if col(i) != _n {
                        offset[col(i)] += 1;
                    }
                }
            }
        }

        // Divide result by two.
        let zero_point_five = T::from(0.5).unwrap();
        sym_val_p.iter_mut().for_each(|p| *p *= zero_point_five);

        *p_values = sym_val_p;
        *sym_p_rows = sym_row_p;
        *sym_p_columns = sym_col_p;
    }

    #[test]
    fn symmetrization_matches_the_crate_entry_for_entry() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for (n_samples, n_neighbors) in [(2, 1), (7, 3), (50, 5), (400, 12), (1000, 30)] {
            let mut columns = Vec::new();
            let mut values = Vec::new();
            for i in 0..n_samples {
                // Unique neighbours other than `i`, biased towards nearby indices so that many
                // pairs list each other.
                let mut row = Vec::new();
                while row.len() < n_neighbors {
                    let j = if rng.random_bool(0.7) {
                        (i + rng.random_range(1..=2 * n_neighbors)) % n_samples
                    } else {
                        rng.random_range(0..n_samples)
                    };
                    if j != i && !row.contains(&(j as u32)) {
                        row.push(j as u32);
                    }
                }
                columns.extend(row);
                values.extend((0..n_neighbors).map(|_| rng.random_range(0.0..1.0f64)));
            }
            let (mut rows, mut cols, mut vals) = (Vec::new(), Vec::new(), values.clone());
            symmetrize_sparse_matrix(&mut rows, &mut cols, columns.clone(), &mut vals, n_samples, &n_neighbors);
            let (mut want_rows, mut want_cols, mut want_vals) = (Vec::new(), Vec::new(), values);
            crate_symmetrize(&mut want_rows, &mut want_cols, columns, &mut want_vals, n_samples, &n_neighbors);
            assert_eq!(rows, want_rows, "{n_samples} x {n_neighbors}");
            assert_eq!(cols, want_cols, "{n_samples} x {n_neighbors}");
            assert_eq!(
                vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want_vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
