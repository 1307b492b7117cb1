//! Qwen-Image's 3-axis RoPE tables for several images at once (an edit: the generated image
//! and its reference images, spec §2.5 and §5.1), made at bind time. For one image the
//! generated modules fold the same tables into constants (the `rope_fold` pass); with
//! reference images of run-time sizes they are made here.
//!
//! Image `i` of `(frames, height, width)` takes the frame positions `i, i + 1, …`, rows and
//! columns centered (`r − (height − height/2)`, likewise for columns); the text follows from
//! the largest `max(height/2, width/2)` of all images (diffusers' `QwenEmbedRope` with
//! `scale_rope`). Each axis `a` of `axes[a]` channels turns at `θ^(−2j / axes[a])`,
//! `j < axes[a] / 2`; a table row holds the three axes' angles one after another.

use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// The cos and sin tables of the image tokens (all images, in order) and of the text.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `[Σ frames·height·width, Σ axes / 2]`.
    pub img_cos: Array,
    pub img_sin: Array,
    /// `[text_len, Σ axes / 2]`.
    pub txt_cos: Array,
    pub txt_sin: Array,
}

/// The tables for `images` `(frames, height, width)` (in packed tokens) and `text_len` text
/// tokens.
pub fn qwen_image_rope(
    axes: [usize; 3],
    theta: f32,
    images: &[(usize, usize, usize)],
    text_len: usize,
) -> Result<RopeTables, Exception> {
    if axes.iter().any(|a| a % 2 != 0) || images.is_empty() {
        return Err(Exception::custom(format!(
            "RoPE tables want even axes and at least one image, got {axes:?} and {images:?}"
        )));
    }
    let inv: Vec<Vec<f32>> = axes
        .iter()
        .map(|&d| {
            (0..d / 2)
                .map(|j| 1.0 / theta.powf((2 * j) as f32 / d as f32))
                .collect()
        })
        .collect();
    let half: usize = axes.iter().sum::<usize>() / 2;
    let row = |pos: [f32; 3], out: &mut Vec<f32>| {
        for (a, inv) in inv.iter().enumerate() {
            out.extend(inv.iter().map(|f| pos[a] * f));
        }
    };
    let mut img = vec![];
    let mut text_from = 0usize;
    for (i, &(frames, h, w)) in images.iter().enumerate() {
        for f in 0..frames {
            for r in 0..h {
                for c in 0..w {
                    let pos = [
                        (i + f) as f32,
                        r as f32 - (h - h / 2) as f32,
                        c as f32 - (w - w / 2) as f32,
                    ];
                    row(pos, &mut img);
                }
            }
        }
        text_from = text_from.max(h / 2).max(w / 2);
    }
    let mut txt = vec![];
    for t in 0..text_len {
        let p = (text_from + t) as f32;
        row([p, p, p], &mut txt);
    }
    let table = |angles: &[f32]| -> Result<(Array, Array), Exception> {
        let a = Array::from_slice(angles, &[(angles.len() / half) as i32, half as i32]);
        Ok((ops::cos(&a)?, ops::sin(&a)?))
    };
    let (img_cos, img_sin) = table(&img)?;
    let (txt_cos, txt_sin) = table(&txt)?;
    Ok(RopeTables {
        img_cos,
        img_sin,
        txt_cos,
        txt_sin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text starts after the largest half side of all images; bad axes or no image are
    /// errors.
    #[test]
    fn text_follows_the_largest_image() {
        let t = qwen_image_rope([2, 2, 2], 10000.0, &[(1, 2, 2), (1, 6, 4)], 2).unwrap();
        assert_eq!(t.img_cos.shape(), &[4 + 24, 3]);
        // text position 3 (= 6/2) on every axis, where inv_freq is 1: sin(3)
        let s = t.txt_sin.as_slice::<f32>()[0];
        assert!((s - 3f32.sin()).abs() < 1e-6, "{s}");
        assert!(qwen_image_rope([3, 2, 2], 10000.0, &[(1, 2, 2)], 1).is_err());
        assert!(qwen_image_rope([2, 2, 2], 10000.0, &[], 1).is_err());
    }
}
