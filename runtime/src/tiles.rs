//! Tiled decoding with the semantics of diffusers' `AutoencoderKLQwenImage.tiled_decode`, on
//! NHWC arrays: the latents cut into overlapping tiles, each decoded alone, each blended
//! linearly into the tile above it and the one to its left, then cropped and joined.

use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// Tiles of `tile` latents every `stride` along both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Latent rows (and columns) per tile.
    pub tile: i32,
    /// Latent rows (and columns) from one tile's start to the next's.
    pub stride: i32,
    /// Pixels per latent (8 for the Qwen-Image VAE).
    pub scale: i32,
}

impl Tiling {
    /// Whether latents of `h × w` are decoded in tiles (diffusers: when either side is longer
    /// than a tile).
    pub fn applies(&self, h: i32, w: i32) -> bool {
        h > self.tile || w > self.tile
    }
}

/// Decodes latents `z` `[B, h, w, C]` tile by tile: the tile at latent row `i`, column `j`
/// (`i, j = 0, stride, …`) is `z[:, i..i + tile, j..j + tile]` (shorter at the ends),
/// decoded by `decode` to `[B, scale·th, scale·tw, D]`; each tile is blended into the tile
/// above it and then the one to its left (both as already blended) over
/// `scale · (tile − stride)` rows and columns, weights `y / extent`; the first
/// `scale · stride` rows and columns of each are kept, joined, and cut to
/// `[B, scale·h, scale·w, D]`.
pub fn tiled_decode(
    z: &Array,
    tiling: Tiling,
    decode: &mut dyn FnMut(&Array) -> Result<Array, Exception>,
) -> Result<Array, Exception> {
    let Tiling {
        tile,
        stride,
        scale,
    } = tiling;
    if tile <= 0 || stride <= 0 || stride > tile || scale <= 0 || z.ndim() != 4 {
        return Err(Exception::custom(format!(
            "tiled decode: tiles of {tile} every {stride} ×{scale} on latents {:?}",
            z.shape()
        )));
    }
    let (h, w) = (z.shape()[1], z.shape()[2]);
    let starts = |n: i32| (0..n).step_by(stride as usize).collect::<Vec<i32>>();
    let mut rows: Vec<Vec<Array>> = vec![];
    for i in starts(h) {
        let mut row = vec![];
        for j in starts(w) {
            let t = slice(&slice(z, 1, i, (i + tile).min(h))?, 2, j, (j + tile).min(w))?;
            // evaluated here: one tile's activations at a time (tiling is for when memory is short)
            let d = decode(&t)?;
            d.eval()?;
            row.push(d);
        }
        rows.push(row);
    }
    let extent = scale * (tile - stride);
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut t = rows[i][j].clone();
            if i > 0 {
                t = blend(&rows[i - 1][j], &t, 1, extent)?;
            }
            if j > 0 {
                t = blend(&rows[i][j - 1], &t, 2, extent)?;
            }
            rows[i][j] = t;
        }
    }
    let keep = scale * stride;
    let mut joined = vec![];
    for row in &rows {
        let kept = row
            .iter()
            .map(|t| {
                slice(
                    &slice(t, 1, 0, keep.min(t.shape()[1]))?,
                    2,
                    0,
                    keep.min(t.shape()[2]),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        joined.push(ops::concatenate(&kept, 2)?);
    }
    let all = ops::concatenate(&joined, 1)?;
    slice(&slice(&all, 1, 0, scale * h)?, 2, 0, scale * w)
}

/// `x[.., start..end, ..]` along `axis`.
fn slice(x: &Array, axis: usize, start: i32, end: i32) -> Result<Array, Exception> {
    let mut parts = ops::split_at_indices(x, &[start, end], axis as i32)?;
    Ok(parts.swap_remove(1))
}

/// diffusers' `blend_v` (`axis` 1) / `blend_h` (`axis` 2): the first `e = min(a's, b's
/// length, extent)` rows (columns) of `b` become `a`'s last `e` ones · (1 − y/e) + `b`'s · y/e.
fn blend(a: &Array, b: &Array, axis: usize, extent: i32) -> Result<Array, Exception> {
    let e = extent.min(a.shape()[axis]).min(b.shape()[axis]);
    if e <= 0 {
        return Ok(b.clone());
    }
    let weights: Vec<f32> = (0..e).map(|y| y as f32 / e as f32).collect();
    let mut shape = vec![1; b.ndim()];
    shape[axis] = e;
    let wb = Array::from_slice(&weights, &shape).as_dtype(b.dtype())?;
    let wa = ops::subtract(&Array::from_f32(1.0).as_dtype(b.dtype())?, &wb)?;
    let la = a.shape()[axis];
    let head = ops::add(
        &ops::multiply(&slice(a, axis, la - e, la)?, &wa)?,
        &ops::multiply(&slice(b, axis, 0, e)?, &wb)?,
    )?;
    let rest = slice(b, axis, e, b.shape()[axis])?;
    ops::concatenate(&[head, rest], axis as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "decoder" that upsamples by nearest neighbour: tiling a smooth ramp must give back
    /// the untiled result where the blend mixes equal values, and the tiles' own values
    /// elsewhere.
    fn upsample(t: &Array) -> Result<Array, Exception> {
        let s = t.shape().to_vec();
        let x = ops::broadcast_to(
            &t.reshape(&[s[0], s[1], 1, s[2], 1, s[3]])?,
            &[s[0], s[1], 2, s[2], 2, s[3]],
        )?;
        x.reshape(&[s[0], 2 * s[1], 2 * s[2], s[3]])
    }

    #[test]
    fn a_decoder_without_context_gives_the_untiled_image() {
        // nearest-neighbour upsampling sees no neighbours: every tile's overlap equals the
        // neighbour's, so blending changes nothing
        let z = Array::from_iter((0..7 * 10).map(|v| v as f32), &[1, 7, 10, 1]);
        let untiled = upsample(&z).unwrap();
        let tiling = Tiling {
            tile: 4,
            stride: 3,
            scale: 2,
        };
        let tiled = tiled_decode(&z, tiling, &mut upsample).unwrap();
        assert_eq!(tiled.shape(), &[1, 14, 20, 1]);
        assert_eq!(tiled.as_slice::<f32>(), untiled.as_slice::<f32>());
    }

    #[test]
    fn overlaps_blend_linearly_into_the_tile_above() {
        // a decoder that marks each tile with its own constant: along a blended seam the
        // values ramp from the upper tile's to the lower tile's
        let z = Array::from_iter((0..6 * 2).map(|_| 0f32), &[1, 6, 2, 1]);
        let mut n = 0f32;
        let mut mark = |t: &Array| -> Result<Array, Exception> {
            n += 1.0;
            let s = t.shape().to_vec();
            ops::full::<f32>(&[s[0], 2 * s[1], 2 * s[2], s[3]], Array::from_f32(n))
        };
        let tiling = Tiling {
            tile: 4,
            stride: 3,
            scale: 2,
        };
        let out = tiled_decode(&z, tiling, &mut mark).unwrap();
        let col: Vec<f32> = out.as_slice::<f32>().iter().step_by(4).copied().collect();
        // rows 0..6 from tile 1 (value 1); rows 6..12 from tile 2 (value 2), its first 2 rows
        // blended with tile 1's last 2 at weights 0 and 1/2
        assert_eq!(
            col,
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]
        );
    }

    #[test]
    fn a_bad_tiling_is_an_error() {
        let z = Array::from_iter((0..4).map(|v| v as f32), &[1, 2, 2, 1]);
        let t = Tiling {
            tile: 2,
            stride: 3,
            scale: 1,
        };
        assert!(tiled_decode(&z, t, &mut upsample).is_err());
    }
}
