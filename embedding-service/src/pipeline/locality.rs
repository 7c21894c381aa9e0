//! Memory order for the optimisation. The attractive forces read every neighbour's position each
//! iteration; with points in corpus order those reads land anywhere in the layout and most of an
//! iteration went to waiting on them. Numbering the points cell by cell puts a point's neighbours
//! (which lie in nearby cells) close together in memory. The map is returned in corpus order.

use bhtsne::Neighbor;

/// Corpus rows sorted by k-means cell (then by row): `order[new] = old`.
pub fn order_by_cell(cells: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&row| (cells[row], row));
    order
}

/// The neighbour lists renumbered into `order`.
pub fn renumber_neighbors(neighbors: Vec<Vec<Neighbor<f32>>>, order: &[usize]) -> Vec<Vec<Neighbor<f32>>> {
    let mut new_index = vec![0; order.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut slots: Vec<Option<Vec<Neighbor<f32>>>> = neighbors.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&old| {
            let mut list = slots[old].take().expect("order is a permutation");
            list.iter_mut().for_each(|neighbor| neighbor.index = new_index[neighbor.index]);
            list
        })
        .collect()
}

/// Rows of `width` values (row-major) taken in `order`.
pub fn reorder_rows<T: Copy>(values: &[T], width: usize, order: &[usize]) -> Vec<T> {
    order.iter().flat_map(|&old| &values[old * width..(old + 1) * width]).copied().collect()
}

/// Points computed in `order`, put back in corpus order.
pub fn restore_order(points: Vec<[f32; 2]>, order: &[usize]) -> Vec<[f32; 2]> {
    let mut restored = vec![[0.0; 2]; points.len()];
    for (point, &old) in points.into_iter().zip(order) {
        restored[old] = point;
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_and_restoring_round_trip() {
        let cells = [2, 0, 1, 0];
        let order = order_by_cell(&cells);
        assert_eq!(order, [1, 3, 2, 0]);
        let neighbors: Vec<Vec<Neighbor<f32>>> =
            (0..4).map(|row| vec![Neighbor { index: (row + 1) % 4, distance: row as f32 }]).collect();
        let renumbered = renumber_neighbors(neighbors, &order);
        // New point 0 is old row 1, whose neighbour old row 2 is now point 2.
        assert_eq!((renumbered[0][0].index, renumbered[0][0].distance), (2, 1.0));
        let layout = reorder_rows(&[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], 2, &order);
        assert_eq!(layout, [1.0, 1.5, 3.0, 3.5, 2.0, 2.5, 0.0, 0.5]);
        let points: Vec<[f32; 2]> = layout.chunks(2).map(|p| [p[0], p[1]]).collect();
        assert_eq!(restore_order(points, &order), [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5], [3.0, 3.5]]);
    }
}
