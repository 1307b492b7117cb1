//! Image resizing as Pillow's `Image.resize` does it for RGB images (the reference pipelines
//! resize their input images with it: diffusers' `VaeImageProcessor.resize` with Lanczos, the
//! Qwen2-VL processor's PIL backend with bicubic), so that an edit sees the same pixels.
//!
//! The method (Pillow's separable convolution): for each output column, the input columns
//! within the filter's support around its center, scaled by the shrink factor when shrinking,
//! weighted by the filter and normalised; the weights in fixed point with 22 fraction bits, the
//! sums rounded and clamped to a byte; columns first into a byte image, then rows.

/// A resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Cubic convolution with a = −0.5, support 2 (Pillow's `BICUBIC`).
    Bicubic,
    /// Lanczos with 3 lobes, support 3 (Pillow's `LANCZOS`).
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if -3.0 < x && x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let p = x * std::f64::consts::PI;
        p.sin() / p
    }
}

/// Fraction bits of the fixed-point weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each of `out` positions: the first input position and the fixed-point weights of the
/// inputs from there.
fn coefficients(input: usize, out: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's truncating casts, then the clamps
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut k: Vec<f64> = (0..n)
                .map(|x| filter.weight(((x + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let fixed = k
                .iter()
                .map(|&w| {
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `rgb` (`height × width × 3` bytes) resized to `new_width × new_height` with `filter`; the
/// same bytes for the same size.
pub fn resize_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
) -> Result<Vec<u8>, String> {
    if rgb.len() != width * height * 3
        || width == 0
        || height == 0
        || new_width == 0
        || new_height == 0
    {
        return Err(format!(
            "resizing {} bytes as a {width}×{height} RGB image to {new_width}×{new_height}",
            rgb.len()
        ));
    }
    if (width, height) == (new_width, new_height) {
        return Ok(rgb.to_vec());
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    // columns first (a byte image new_width × height), then rows
    let horizontal = if new_width != width {
        let cs = coefficients(width, new_width, filter);
        let mut out = vec![0u8; new_width * height * 3];
        for y in 0..height {
            for (x, (first, k)) in cs.iter().enumerate() {
                for c in 0..3 {
                    let mut s = half;
                    for (i, w) in k.iter().enumerate() {
                        s += rgb[(y * width + first + i) * 3 + c] as i64 * *w as i64;
                    }
                    out[(y * new_width + x) * 3 + c] = clip8(s);
                }
            }
        }
        out
    } else {
        rgb.to_vec()
    };
    if new_height == height {
        return Ok(horizontal);
    }
    let cs = coefficients(height, new_height, filter);
    let mut out = vec![0u8; new_width * new_height * 3];
    for (y, (first, k)) in cs.iter().enumerate() {
        for x in 0..new_width {
            for c in 0..3 {
                let mut s = half;
                for (i, w) in k.iter().enumerate() {
                    s += horizontal[((first + i) * new_width + x) * 3 + c] as i64 * *w as i64;
                }
                out[(y * new_width + x) * 3 + c] = clip8(s);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights sum to one (in fixed point, within a rounding per weight), and a constant
    /// image stays constant.
    #[test]
    fn a_flat_image_stays_flat() {
        let flat = vec![200u8; 9 * 7 * 3];
        for f in [Filter::Bicubic, Filter::Lanczos] {
            let out = resize_rgb(&flat, 9, 7, 4, 11, f).unwrap();
            assert!(out.iter().all(|&v| v == 200), "{f:?}");
        }
        assert!(resize_rgb(&flat, 9, 8, 4, 4, Filter::Bicubic).is_err());
    }
}
