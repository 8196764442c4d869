//! Dominance, fast non-dominated sorting (Deb et al. 2002), crowding distance, fronts.

/// Whether `a` dominates `b` (all objectives minimised): no worse in all, better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        if x < y {
            better = true;
        }
    }
    better
}

/// Fronts of indices: front 0 is non-dominated, front 1 is non-dominated once front 0 is
/// removed, and so on (Deb's fast non-dominated sort, O(M N²)).
pub fn non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut count = vec![0usize; n];
    let mut fronts: Vec<Vec<usize>> = vec![Vec::new()];
    for i in 0..n {
        for j in i + 1..n {
            if dominates(&points[i], &points[j]) {
                dominated_by[i].push(j);
                count[j] += 1;
            } else if dominates(&points[j], &points[i]) {
                dominated_by[j].push(i);
                count[i] += 1;
            }
        }
    }
    fronts[0].extend(count.iter().enumerate().filter(|(_, c)| **c == 0).map(|(i, _)| i));
    let mut k = 0;
    while !fronts[k].is_empty() {
        let mut next = Vec::new();
        for &i in &fronts[k] {
            for &j in &dominated_by[i] {
                count[j] -= 1;
                if count[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(next);
        k += 1;
    }
    fronts.pop();
    fronts
}

/// Rank (front index) of every point.
pub fn ranks(points: &[Vec<f64>]) -> Vec<usize> {
    let mut r = vec![0; points.len()];
    for (k, front) in non_dominated_sort(points).iter().enumerate() {
        for &i in front {
            r[i] = k;
        }
    }
    r
}

/// Crowding distance of the points of one front (Deb et al. 2002): per objective, sort, give
/// the extremes infinity and the others the normalised gap between their neighbours.
pub fn crowding_distance(points: &[&[f64]]) -> Vec<f64> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let m = points[0].len();
    let mut d = vec![0.0; n];
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let mut order: Vec<usize> = (0..n).collect();
    #[allow(clippy::needless_range_loop)] // `k` is the objective: points[a][k]
    for k in 0..m {
        order.sort_by(|&a, &b| points[a][k].total_cmp(&points[b][k]).then(a.cmp(&b)));
        let (lo, hi) = (points[order[0]][k], points[order[n - 1]][k]);
        d[order[0]] = f64::INFINITY;
        d[order[n - 1]] = f64::INFINITY;
        let span = hi - lo;
        if span <= 0.0 || !span.is_finite() {
            continue;
        }
        for w in 1..n - 1 {
            d[order[w]] += (points[order[w + 1]][k] - points[order[w - 1]][k]) / span;
        }
    }
    d
}

/// Indices of the non-dominated points, in input order (duplicates kept once, the first;
/// points with a non-finite objective left out).
///
/// Points are visited in lexicographic order: a point can only be dominated by one before it,
/// and if it is dominated at all, then by an already accepted one (dominance is transitive), so
/// each point is compared with the accepted front only: O(n log n + n·|front|).
pub fn pareto_front(points: &[Vec<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).filter(|&i| points[i].iter().all(|v| v.is_finite())).collect();
    order.sort_by(|&a, &b| {
        points[a]
            .iter()
            .zip(&points[b])
            .map(|(x, y)| x.total_cmp(y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut front: Vec<usize> = Vec::new();
    for i in order {
        let p = &points[i];
        if !front.iter().any(|&j| dominates(&points[j], p) || points[j] == *p) {
            front.push(i);
        }
    }
    front.sort_unstable();
    front
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Brute force: peel off the points no remaining point dominates.
    fn brute_force_ranks(points: &[Vec<f64>]) -> Vec<usize> {
        let mut rank = vec![usize::MAX; points.len()];
        let mut k = 0;
        while rank.contains(&usize::MAX) {
            let remaining: Vec<usize> = (0..points.len()).filter(|&i| rank[i] == usize::MAX).collect();
            let front: Vec<usize> =
                remaining.iter().copied().filter(|&i| !remaining.iter().any(|&j| dominates(&points[j], &points[i]))).collect();
            for i in front {
                rank[i] = k;
            }
            k += 1;
        }
        rank
    }

    proptest! {
        #[test]
        fn sorting_matches_brute_force(points in prop::collection::vec(prop::collection::vec(0u8..6, 3), 0..40)) {
            let pts: Vec<Vec<f64>> = points.iter().map(|p| p.iter().map(|&v| v as f64).collect()).collect();
            prop_assert_eq!(ranks(&pts), brute_force_ranks(&pts));
        }
    }

    #[test]
    fn crowding_by_hand() {
        // Four points on a line f2 = 3 - f1.
        let pts = [[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]];
        let refs: Vec<&[f64]> = pts.iter().map(|p| &p[..]).collect();
        let d = crowding_distance(&refs);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        // Middle points: (2-0)/3 in each of the two objectives.
        assert!((d[1] - 4.0 / 3.0).abs() < 1e-12);
        assert!((d[2] - 4.0 / 3.0).abs() < 1e-12);
        let uneven = [[0.0, 1.0], [0.1, 0.9], [1.0, 0.0]];
        let refs: Vec<&[f64]> = uneven.iter().map(|p| &p[..]).collect();
        assert!((crowding_distance(&refs)[1] - 2.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn front_matches_brute_force(points in prop::collection::vec(prop::collection::vec(0u8..5, 2..4), 0..40)) {
            let m = points.first().map_or(0, Vec::len);
            let pts: Vec<Vec<f64>> = points.iter().filter(|p| p.len() == m).map(|p| p.iter().map(|&v| v as f64).collect()).collect();
            let brute: Vec<usize> = (0..pts.len())
                .filter(|&i| !pts.iter().any(|q| dominates(q, &pts[i])) && !pts[..i].contains(&pts[i]))
                .collect();
            prop_assert_eq!(pareto_front(&pts), brute);
        }
    }

    #[test]
    fn front_skips_dominated_duplicates_and_failures() {
        let pts = vec![vec![1.0, 2.0], vec![2.0, 1.0], vec![2.0, 2.0], vec![1.0, 2.0], vec![f64::INFINITY, 0.0]];
        assert_eq!(pareto_front(&pts), vec![0, 1]);
    }
}
