//! Latents: the packed `[1, L_img, 64]` layout the transformer sees ([`pack`],
//! [`unpack_nhwc`]), the grid of a resolution, and seeded noise.

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, random, Array};

use super::{mlx, Pipeline, PipelineError, Result};

/// Latent channels (the VAE's `z_dim`) and channels of a packed 2×2 token.
pub(super) const LATENT_CHANNELS: usize = 16;
pub(super) const PACKED_CHANNELS: usize = 64;

impl Pipeline {
    /// `(gh, gw)`: the packed grid.
    pub(super) fn grid(&self) -> (usize, usize) {
        let r = self.resolution();
        (r.height / 16, r.width / 16)
    }

    /// Packed image tokens `L_img`.
    pub fn image_seq_len(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }

    /// Standard normal noise from `seed` (MLX's generator), drawn `[1, 16, h, w]`, packed.
    pub fn noise(&self, seed: u64) -> Result<Array> {
        let (gh, gw) = self.grid();
        let key = random::key(seed).map_err(mlx("making the random key"))?;
        let shape = [1, LATENT_CHANNELS as i32, 2 * gh as i32, 2 * gw as i32];
        let noise = random::normal::<f32>(&shape[..], None, None, &key)
            .map_err(mlx("drawing the noise"))?;
        pack(&noise, gh, gw).map_err(mlx("packing the noise"))
    }

    /// The initial latents of `count` images in the batches they are denoised in: `given`
    /// (one image) or seeded noise (`seed`, `seed + 1`, …); all `count` in one batch where it
    /// fits beside what is loaded ([`Pipeline::batch_fits`]), else one at a time.
    pub(super) fn initial_batches(
        &self,
        given: Option<&Array>,
        seed: u64,
        count: usize,
    ) -> Result<Vec<Array>> {
        let initial: Vec<Array> = match given {
            Some(l) => vec![l.clone()],
            None => (0..count as u64)
                .map(|k| self.noise(seed.wrapping_add(k)))
                .collect::<Result<_>>()?,
        };
        if initial.len() > 1 && self.batch_fits(count) {
            let all = ops::concatenate(&initial, 0).map_err(mlx("joining the images' noise"))?;
            Ok(vec![all])
        } else {
            Ok(initial)
        }
    }

    /// An error unless `latents` are `[1, L_img, 64]`.
    pub(super) fn check_latents(&self, latents: &Array) -> Result<()> {
        self.check_latents_of(latents, 1)
    }

    /// An error unless `latents` are `[N, L_img, 64]`, N ≥ 1 (N images of one text).
    pub(super) fn check_latents_batch(&self, latents: &Array) -> Result<()> {
        let n = latents.shape().first().copied().unwrap_or(0);
        self.check_latents_of(latents, n.max(1))
    }

    /// The latents of an image as the transformer sees them (an edit's reference image, spec
    /// §5.1): NHWC `[1, H, W, 3]` in [−1, 1], `H` and `W` multiples of 16 (any size: the VAE
    /// encoder's is free) → the VAE posterior's mean, normalised `(z − mean) / std`, packed
    /// `[1, (H/16)·(W/16), 64]` (f32). The encoder loads on the first call.
    pub fn encode_image(&self, image: &Array) -> Result<Array> {
        let s = image.shape();
        if s.len() != 4
            || s[0] != 1
            || s[3] != 3
            || s[1] <= 0
            || s[2] <= 0
            || s[1] % 16 != 0
            || s[2] % 16 != 0
        {
            return Err(PipelineError::Request(format!(
                "an image to encode must be [1, H, W, 3] with H and W positive multiples of 16, got {s:?}"
            )));
        }
        let encoder = match self.image_encoder.get() {
            Some(e) => e,
            None => {
                let e = self
                    .variant
                    .load_vae_encoder(&self.checkpoints.vae, self.dtype)?;
                self.image_encoder.get_or_init(|| e)
            }
        };
        let encode = || -> std::result::Result<Array, Exception> {
            let z = encoder.encode(&image.as_dtype(self.dtype)?)?; // [1, h, w, 16]
            let z = z.as_dtype(qwen_runtime::__private::mlx_rs::Dtype::Float32)?;
            let c = LATENT_CHANNELS as i32;
            let mean = Array::from_slice(&self.latents_mean, &[c]);
            let std = Array::from_slice(&self.latents_std, &[c]);
            let z = ops::divide(&ops::subtract(&z, &mean)?, &std)?;
            let z = ops::transpose_axes(&z, &[0, 3, 1, 2])?; // [1, 16, h, w]
            pack(&z, (s[1] / 16) as usize, (s[2] / 16) as usize)
        };
        encode().map_err(mlx("encoding the image"))
    }

    fn check_latents_of(&self, latents: &Array, batch: i32) -> Result<()> {
        let expected = vec![batch, self.image_seq_len() as i32, PACKED_CHANNELS as i32];
        if latents.shape() != expected.as_slice() {
            return Err(PipelineError::LatentsShape {
                expected,
                got: latents.shape().to_vec(),
            });
        }
        Ok(())
    }
}

/// A denoised batch `[N, L, 64]` back into its N images `[1, L, 64]`, in order.
pub(super) fn batch_rows(batch: Array) -> Result<Vec<Array>> {
    match batch.shape()[0] {
        1 => Ok(vec![batch]),
        n => ops::split_equal(&batch, n, 0).map_err(mlx("splitting the batch")),
    }
}

/// `[1, 16, h, w]` → `[1, gh·gw, 64]`: token = row·gw + col, channel = c·4 + dy·2 + dx.
pub fn pack(x: &Array, gh: usize, gw: usize) -> Result<Array, Exception> {
    let (gh, gw) = (gh as i32, gw as i32);
    let c = LATENT_CHANNELS as i32;
    let x = ops::reshape(x, &[1, c, gh, 2, gw, 2])?;
    let x = ops::transpose_axes(&x, &[0, 2, 4, 1, 3, 5])?;
    ops::reshape(&x, &[1, gh * gw, c * 4])
}

/// `[1, gh·gw, 64]` → NHWC `[1, h, w, 16]` (the inverse of [`pack`], channels last).
pub fn unpack_nhwc(x: &Array, gh: usize, gw: usize) -> Result<Array, Exception> {
    let (gh, gw) = (gh as i32, gw as i32);
    let c = LATENT_CHANNELS as i32;
    let x = ops::reshape(x, &[1, gh, gw, c, 2, 2])?;
    let x = ops::transpose_axes(&x, &[0, 1, 4, 2, 5, 3])?;
    ops::reshape(&x, &[1, 2 * gh, 2 * gw, c])
}
