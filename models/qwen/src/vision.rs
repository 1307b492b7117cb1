//! What the generated vision tower (`vision_tower`, `qwen_graph::vision`) is given for one
//! image, made from its patch grid at bind time: the Qwen2.5-VL window order of the tokens,
//! their 2-D rotary tables, the windows' attention mask and the way back to the image's order
//! (spec §5.3; the same index arithmetic as transformers' `get_vision_window_index` and
//! `get_vision_position_ids`); and what the text encoder with images
//! (`text_encoder_with_images`) is given for a prompt holding images ([`PromptImages`]: which
//! rows take which image embedding, and the multimodal RoPE tables of `get_rope_index`).

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, Array};

/// The sizes of the tower that the layout depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionLayout {
    /// Patches per merged token side (2).
    pub merge: usize,
    /// Merged tokens per window side (112 px / 14 px / 2 = 4).
    pub window: usize,
    /// Head size of the attention (the rotary tables are half of it).
    pub head_dim: usize,
}

/// RoPE θ of the vision tower.
const THETA: f32 = 10000.0;

/// One image's patch grid laid out for the tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionGrid {
    /// Patch rows and columns (multiples of `merge`).
    pub rows: usize,
    pub cols: usize,
    /// The merged tokens in window order (indices into the image's row-major merged grid).
    pub window_index: Vec<usize>,
    /// Where each window's patches start and end in window order (`[0, …, rows·cols]`).
    pub cu_window_seqlens: Vec<usize>,
    /// `(row, column)` of each patch, in the processor's order (merged cell by merged cell,
    /// each cell's 2×2 patches row by row).
    pub positions: Vec<(usize, usize)>,
}

impl VisionGrid {
    /// The layout of a `rows × cols` patch grid; an error unless both are positive multiples
    /// of the merge size.
    pub fn new(rows: usize, cols: usize, l: VisionLayout) -> Result<Self, String> {
        let m = l.merge;
        if m == 0 || l.window == 0 || rows == 0 || cols == 0 || rows % m != 0 || cols % m != 0 {
            return Err(format!(
                "a {rows}×{cols} patch grid: want positive multiples of {m} on both sides"
            ));
        }
        let (mr, mc) = (rows / m, cols / m);
        let w = l.window;
        let (wr, wc) = (mr.div_ceil(w), mc.div_ceil(w));
        let mut window_index = Vec::with_capacity(mr * mc);
        let mut cu = vec![0];
        for wy in 0..wr {
            for wx in 0..wc {
                let before = window_index.len();
                for y in wy * w..((wy + 1) * w).min(mr) {
                    for x in wx * w..((wx + 1) * w).min(mc) {
                        window_index.push(y * mc + x);
                    }
                }
                if window_index.len() > before {
                    cu.push(window_index.len() * m * m);
                }
            }
        }
        let mut positions = Vec::with_capacity(rows * cols);
        for y in 0..mr {
            for x in 0..mc {
                for a in 0..m {
                    for b in 0..m {
                        positions.push((y * m + a, x * m + b));
                    }
                }
            }
        }
        Ok(Self {
            rows,
            cols,
            window_index,
            cu_window_seqlens: cu,
            positions,
        })
    }

    /// The patches in window order: the processor's patch numbers, each merged token's
    /// `merge²` patches kept together.
    pub fn patch_order(&self, l: VisionLayout) -> Vec<usize> {
        let unit = l.merge * l.merge;
        self.window_index
            .iter()
            .flat_map(|&k| (k * unit)..(k * unit + unit))
            .collect()
    }

    /// The tower's inputs for `patches` `[rows·cols, C·T·P·P]` in the processor's order:
    /// the patches, the rotary `cos` and `sin` `[L, head_dim / 2]` (the row angles, then the
    /// column ones), the additive mask `[L, L]` (0 within a window, −∞ across) in window
    /// order, and the merged rows' way back, `reverse` `[L / merge²]`.
    pub fn inputs(&self, patches: &Array, l: VisionLayout) -> Result<[Array; 5], Exception> {
        let n = self.rows * self.cols;
        if patches.shape().first() != Some(&(n as i32)) {
            return Err(Exception::custom(format!(
                "{} patch rows for a {}×{} grid, got {:?}",
                n,
                self.rows,
                self.cols,
                patches.shape()
            )));
        }
        let order = self.patch_order(l);
        let idx: Vec<i32> = order.iter().map(|&i| i as i32).collect();
        let patches = patches.take_axis(Array::from_slice(&idx, &[n as i32]), 0)?;
        // angles: row · inv_freq then column · inv_freq, inv_freq over head_dim / 4
        let quarter = l.head_dim / 4;
        let inv: Vec<f32> = (0..quarter)
            .map(|j| 1.0 / THETA.powf((2 * j) as f32 / (l.head_dim / 2) as f32))
            .collect();
        let mut angles = Vec::with_capacity(n * 2 * quarter);
        for &p in &order {
            let (r, c) = self.positions[p];
            angles.extend(inv.iter().map(|f| r as f32 * f));
            angles.extend(inv.iter().map(|f| c as f32 * f));
        }
        let angles = Array::from_slice(&angles, &[n as i32, (2 * quarter) as i32]);
        let (cos, sin) = (ops::cos(&angles)?, ops::sin(&angles)?);
        let mut window_of = vec![0usize; n];
        for (wi, pair) in self.cu_window_seqlens.windows(2).enumerate() {
            window_of[pair[0]..pair[1]].fill(wi);
        }
        let mask: Vec<f32> = (0..n * n)
            .map(|k| {
                if window_of[k / n] == window_of[k % n] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Array::from_slice(&mask, &[n as i32, n as i32]);
        let mut reverse = vec![0i32; self.window_index.len()];
        for (pos, &k) in self.window_index.iter().enumerate() {
            reverse[k] = pos as i32;
        }
        let reverse = Array::from_slice(&reverse, &[reverse.len() as i32]);
        Ok([patches, cos, sin, mask, reverse])
    }
}

/// CLIP's per-channel mean and standard deviation, the Qwen2-VL processor's normalization
/// (the published decimals; f32 keeps what it can of them).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The patch rows of an RGB image (`height × width × 3` bytes, both sides multiples of
/// `patch · merge`) as the Qwen2-VL processor makes them: each value `(v / 255 − mean) / std`,
/// the frame repeated `temporal` times, one row per patch in merge order (merged cell by
/// merged cell, its `merge²` patches row by row), a row `channel, frame, y, x`. Returns the
/// rows (`[(height/patch)·(width/patch), 3·temporal·patch²]`, row-major) and the patch grid.
pub fn image_patches(
    rgb: &[u8],
    width: usize,
    height: usize,
    patch: usize,
    merge: usize,
    temporal: usize,
) -> Result<(Vec<f32>, (usize, usize)), String> {
    let cell = patch * merge;
    if cell == 0 || width % cell != 0 || height % cell != 0 || width == 0 || height == 0 {
        return Err(format!(
            "a {width}×{height} image: both sides must be positive multiples of {cell}"
        ));
    }
    if rgb.len() != width * height * 3 {
        return Err(format!(
            "{} bytes for a {width}×{height} RGB image",
            rgb.len()
        ));
    }
    let (gh, gw) = (height / patch, width / patch);
    let value = |y: usize, x: usize, c: usize| {
        (rgb[(y * width + x) * 3 + c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
    };
    let mut rows = Vec::with_capacity(gh * gw * 3 * temporal * patch * patch);
    for my in 0..gh / merge {
        for mx in 0..gw / merge {
            for a in 0..merge {
                for b in 0..merge {
                    let (py, px) = ((my * merge + a) * patch, (mx * merge + b) * patch);
                    for c in 0..3 {
                        for _ in 0..temporal {
                            for y in 0..patch {
                                for x in 0..patch {
                                    rows.push(value(py + y, px + x, c));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((rows, (gh, gw)))
}

/// The images of a prompt for `text_encoder_with_images`: which rows are image tokens and
/// which embedding of the stacked image embeddings each takes, and the multimodal RoPE
/// positions (spec §5.3: text `0..p` on all three axes; an image's tokens `(p, p + row,
/// p + column)` over its merged grid; the text after it from `p + max(rows, columns)`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptImages {
    /// Per token: the row of the stacked image embeddings, 0 for text.
    pub rows: Vec<i32>,
    /// Per token: 1 for an image token, else 0.
    pub mask: Vec<f32>,
    /// Per token: (temporal, row, column) positions.
    pub positions: Vec<[usize; 3]>,
}

impl PromptImages {
    /// For the token ids `ids` of one prompt, with `image_token` runs standing for the images
    /// whose merged grids are `grids` (rows, columns), in order; an error when the runs and
    /// the grids do not agree.
    pub fn new(ids: &[i32], image_token: i32, grids: &[(usize, usize)]) -> Result<Self, String> {
        let (mut rows, mut mask, mut positions) = (vec![], vec![], vec![]);
        let mut next = 0usize; // the next text position
        let mut image = 0usize; // images seen
        let mut stacked = 0usize; // image embeddings used
        let mut i = 0;
        while i < ids.len() {
            if ids[i] != image_token {
                rows.push(0);
                mask.push(0.0);
                positions.push([next; 3]);
                next += 1;
                i += 1;
                continue;
            }
            let run = ids[i..].iter().take_while(|t| **t == image_token).count();
            let &(gr, gc) = grids.get(image).ok_or_else(|| {
                format!(
                    "image token run {} has no grid ({} given)",
                    image + 1,
                    grids.len()
                )
            })?;
            if run != gr * gc {
                return Err(format!(
                    "image {}: {run} image tokens for a {gr}×{gc} merged grid",
                    image + 1
                ));
            }
            for r in 0..gr {
                for c in 0..gc {
                    rows.push((stacked + r * gc + c) as i32);
                    mask.push(1.0);
                    positions.push([next, next + r, next + c]);
                }
            }
            next += gr.max(gc);
            stacked += run;
            image += 1;
            i += run;
        }
        if image != grids.len() {
            return Err(format!("{} grids for {image} images", grids.len()));
        }
        Ok(Self {
            rows,
            mask,
            positions,
        })
    }

    /// The RoPE tables `[S, head_dim / 2]` (cos, sin): half-dim `j` turns with the temporal
    /// position for the first `sections[0]` of them, the row for the next `sections[1]`, the
    /// column for the rest (Qwen2.5-VL's `mrope_section`), at `θ^(−2j / head_dim)`.
    pub fn rope(
        &self,
        head_dim: usize,
        theta: f32,
        sections: [usize; 3],
    ) -> Result<(Array, Array), Exception> {
        let half = head_dim / 2;
        if sections.iter().sum::<usize>() != half {
            return Err(Exception::custom(format!(
                "mrope sections {sections:?} do not add up to half the head size {half}"
            )));
        }
        let axis: Vec<usize> = (0..half)
            .map(|j| {
                if j < sections[0] {
                    0
                } else if j < sections[0] + sections[1] {
                    1
                } else {
                    2
                }
            })
            .collect();
        let angles: Vec<f32> = self
            .positions
            .iter()
            .flat_map(|p| {
                axis.iter().enumerate().map(move |(j, &a)| {
                    p[a] as f32 * (1.0 / theta.powf((2 * j) as f32 / head_dim as f32))
                })
            })
            .collect();
        let angles = Array::from_slice(&angles, &[self.positions.len() as i32, half as i32]);
        Ok((ops::cos(&angles)?, ops::sin(&angles)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: VisionLayout = VisionLayout {
        merge: 2,
        window: 4,
        head_dim: 16,
    };

    /// 8×12 patches: merged 4×6, one full window of 4×4 and one of 4×2.
    #[test]
    fn windows_cover_the_merged_grid_once() {
        let g = VisionGrid::new(8, 12, L).unwrap();
        assert_eq!(g.cu_window_seqlens, [0, 64, 96]);
        assert_eq!(&g.window_index[..5], &[0, 1, 2, 3, 6]);
        let mut seen = g.window_index.clone();
        seen.sort();
        assert_eq!(seen, (0..24).collect::<Vec<_>>());
        assert_eq!(&g.positions[..5], &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]);
        assert!(VisionGrid::new(7, 12, L).is_err());
    }

    /// Text, a 2×3 image, text: the image's positions start where the text stops, the text
    /// after it continues from there plus the larger grid side.
    #[test]
    fn prompt_images_place_each_image_on_its_grid() {
        let (t, x) = (5, 9);
        let ids = [t, t, x, x, x, x, x, x, t];
        let p = PromptImages::new(&ids, x, &[(2, 3)]).unwrap();
        assert_eq!(p.rows, [0, 0, 0, 1, 2, 3, 4, 5, 0]);
        assert_eq!(p.positions[2], [2, 2, 2]);
        assert_eq!(p.positions[7], [2, 3, 4]);
        assert_eq!(p.positions[8], [5, 5, 5]);
        assert!(PromptImages::new(&ids, x, &[(2, 2)]).is_err());
        assert!(PromptImages::new(&ids, x, &[]).is_err());
    }
}
