//! Hypervolume of a set of points (minimisation) with respect to a reference point.
//!
//! Exact in every dimension: 2 objectives by a sweep (O(n log n)), 3 by slicing along the third
//! objective with a 2-D sweep per slice (O(n² log n)), and 4 or more by the same slicing applied
//! recursively (HSO, "hypervolume by slicing objectives", While et al. 2006), whose cost grows
//! exponentially with the number of objectives: fine for the fronts of a few hundred points that
//! searches produce, not for huge sets.

use crate::pareto::pareto_front;

/// Hypervolume dominated by `points` and bounded by `reference`. Points not strictly better than
/// the reference in every objective contribute nothing.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let inside: Vec<Vec<f64>> =
        points.iter().filter(|p| p.len() == reference.len() && p.iter().zip(reference).all(|(a, r)| a < r)).cloned().collect();
    let front: Vec<Vec<f64>> = pareto_front(&inside).into_iter().map(|i| inside[i].clone()).collect();
    hv(front, reference)
}

fn hv(mut pts: Vec<Vec<f64>>, r: &[f64]) -> f64 {
    if pts.is_empty() {
        return 0.0;
    }
    match r.len() {
        1 => r[0] - pts.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
        2 => {
            pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
            let mut area = 0.0;
            let mut best_y = r[1];
            for p in &pts {
                if p[1] < best_y {
                    area += (r[0] - p[0]) * (best_y - p[1]);
                    best_y = p[1];
                }
            }
            area
        }
        d => {
            // Slice along the last objective: between consecutive values z_i < z_{i+1}, the
            // dominated region is that of the (d-1)-dimensional projections of points with z <= z_i.
            pts.sort_by(|a, b| a[d - 1].total_cmp(&b[d - 1]));
            let mut volume = 0.0;
            let mut active: Vec<Vec<f64>> = Vec::new();
            for i in 0..pts.len() {
                active.push(pts[i][..d - 1].to_vec());
                let next = if i + 1 < pts.len() { pts[i + 1][d - 1] } else { r[d - 1] };
                let depth = next - pts[i][d - 1];
                if depth > 0.0 {
                    let proj: Vec<Vec<f64>> = pareto_front(&active).into_iter().map(|j| active[j].clone()).collect();
                    active = proj;
                    volume += depth * hv(active.clone(), &r[..d - 1]);
                }
            }
            volume
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Brute force on a grid: the points are on a 1/q grid, so counting grid cells is exact.
    fn grid_volume(points: &[Vec<f64>], r: &[f64], q: usize) -> f64 {
        let d = r.len();
        let cells: Vec<usize> = r.iter().map(|x| (x * q as f64).round() as usize).collect();
        let total: usize = cells.iter().product();
        let mut count = 0;
        for idx in 0..total {
            let mut rem = idx;
            let centre: Vec<f64> = (0..d)
                .map(|k| {
                    let c = rem % cells[k];
                    rem /= cells[k];
                    (c as f64 + 0.5) / q as f64
                })
                .collect();
            if points.iter().any(|p| p.iter().zip(&centre).all(|(a, c)| a <= c)) {
                count += 1;
            }
        }
        count as f64 / (q as f64).powi(d as i32)
    }

    #[test]
    fn matches_brute_force_on_random_sets() {
        let mut rng = StdRng::seed_from_u64(5);
        for d in 2..=4 {
            for _ in 0..20 {
                let q = 8;
                let n = rng.random_range(1..9);
                let pts: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| rng.random_range(0..q) as f64 / q as f64).collect()).collect();
                let r = vec![1.0; d];
                let exact = hypervolume(&pts, &r);
                let brute = grid_volume(&pts, &r, q);
                assert!((exact - brute).abs() < 1e-9, "d={d}: {exact} vs {brute} for {pts:?}");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(hypervolume(&[vec![0.0, 0.0]], &[1.0, 1.0]), 1.0);
        assert_eq!(hypervolume(&[vec![0.5, 0.5], vec![2.0, 0.0]], &[1.0, 1.0]), 0.25);
        let staircase = vec![vec![0.0, 0.5], vec![0.5, 0.0]];
        assert!((hypervolume(&staircase, &[1.0, 1.0]) - 0.75).abs() < 1e-12);
        assert!((hypervolume(&[vec![0.5, 0.5, 0.5]], &[1.0, 1.0, 1.0]) - 0.125).abs() < 1e-12);
    }
}
