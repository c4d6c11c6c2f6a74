//! Vector maths shared by the classifier and the embedded memory search. Vectors are kept unit
//! length, so a dot product is the cosine similarity.

use crate::ports::Embedding;

/// Scales a vector to unit length (a zero vector stays zero).
pub fn normalize(v: &[f32]) -> Embedding {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        v.into()
    } else {
        v.iter().map(|x| x / norm).collect()
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_vectors_have_cosine_one_with_themselves() {
        let v = normalize(&[3.0, 4.0]);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-6);
        assert_eq!(&*normalize(&[0.0, 0.0]), &[0.0, 0.0]);
    }
}
