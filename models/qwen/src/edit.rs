//! The sizes of an edit (Qwen-Image-Edit-2509 and -2511, spec §5.1 and §5.3), with Python's
//! arithmetic (`round` ties to even): the generated image's from the last input image's
//! aspect, each input's for the vision path and for the VAE, and the Qwen2-VL processor's
//! rounding of the vision path's size to whole patches (`smart_resize`).

/// The area of an input image on the vision path (`CONDITION_IMAGE_SIZE`).
pub const CONDITION_AREA: usize = 384 * 384;
/// The area of an input image on the VAE path and of the generated image (`VAE_IMAGE_SIZE`).
pub const VAE_AREA: usize = 1024 * 1024;

/// `(width, height)` at about `area` pixels with the aspect `ratio` (width / height), each a
/// multiple of 32 (diffusers' `calculate_dimensions`: both sides rounded on their own).
pub fn area_size(area: usize, ratio: f64) -> (usize, usize) {
    let width = (area as f64 * ratio).sqrt();
    let height = width / ratio;
    let snap = |v: f64| ((v / 32.0).round_ties_even() * 32.0) as usize;
    (snap(width), snap(height))
}

/// The generated image's `(width, height)` when none is asked for: the last input's
/// `(width, height)` aspect at 1024² area, floored to multiples of 16.
pub fn output_size(last: (usize, usize)) -> (usize, usize) {
    let (w, h) = area_size(VAE_AREA, last.0 as f64 / last.1 as f64);
    (w / 16 * 16, h / 16 * 16)
}

/// The Qwen2-VL processor's size for an image of `height × width`: `(height, width)`, each a
/// multiple of `factor` (28: patch 14 × merge 2), rounded to the nearest, then scaled (down
/// with floors, up with ceilings) into `min_pixels..=max_pixels`; an error past an aspect of
/// 200 or for an empty side.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), String> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(format!(
            "an image of {width}×{height} has no pixels to patch"
        ));
    }
    let (hf, wf, f) = (height as f64, width as f64, factor as f64);
    let aspect = hf.max(wf) / hf.min(wf);
    if aspect > 200.0 {
        return Err(format!(
            "an image of {width}×{height}: the aspect ratio must be at most 200, got {aspect:.1}"
        ));
    }
    let mut h = ((hf / f).round_ties_even() * f) as usize;
    let mut w = ((wf / f).round_ties_even() * f) as usize;
    if h * w > max_pixels {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        h = factor.max(((hf / beta / f).floor() * f) as usize);
        w = factor.max(((wf / beta / f).floor() * f) as usize);
    } else if h * w < min_pixels {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        h = ((hf * beta / f).ceil() * f) as usize;
        w = ((wf * beta / f).ceil() * f) as usize;
    }
    Ok((h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_and_bad_sizes() {
        // 1.5 · 32 rounds to 2 · 32 (even), 2.5 · 32 to 2 · 32
        assert_eq!(((48.0f64 / 32.0).round_ties_even() * 32.0) as usize, 64);
        assert_eq!(((80.0f64 / 32.0).round_ties_even() * 32.0) as usize, 64);
        assert!(smart_resize(10, 2500, 28, 3136, 1 << 30).is_err());
        assert!(smart_resize(0, 10, 28, 3136, 1 << 30).is_err());
        assert_eq!(output_size((1024, 1024)), (1024, 1024));
    }
}
