//! Flow-matching Euler sampling: the sigma schedule and the Euler step.
//!
//! The schedule is diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas, mu)` as
//! a flow pipeline calls it with `sigmas = linspace(1, 1/N, N)`:
//!
//! 1. base sigmas `s_i = linspace(1, 1/N, N)` (f64, rounded to f32);
//! 2. shift: dynamic, `s' = e^mu / (e^mu + (1/s − 1))` (exponential) or `mu / (mu + (1/s − 1))`
//!    (linear) with `mu` linear in the image sequence length ([`SchedulerConfig::mu`], not
//!    clamped); or static, `s' = shift·s / (1 + (shift − 1)·s)`;
//! 3. optional terminal stretch: `s'' = 1 − (1 − s') · (1 − terminal) / (1 − s'_{N−1})`, so the
//!    last sigma lands on `shift_terminal`;
//! 4. `timesteps = sigmas · num_train_timesteps`; a final sigma 0 is appended.
//!
//! Steps 2–4 run in f32 in the order diffusers runs them (numpy float32 arrays, Python
//! scalars rounded to f32), so the sigmas match the reference bit for bit or within an ulp.
//!
//! **One step with the terminal stretch.** With N = 1 the only sigma is 1, the stretch divides
//! 0 by 0 and diffusers yields NaN. Here the stretch is skipped for N = 1: the schedule is
//! `[1, 0]`, timestep 1000, a single Euler step from pure noise to the model's clean estimate
//! (`x − v`), which is what one-step flow sampling means and what the schedule is without a
//! terminal. The stretch only moves the *last* sigma, and with one step the last sigma is also
//! the first, which must stay 1.

use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::Array;
use serde::Deserialize;

use crate::error::SchedulerError;

/// `scheduler/scheduler_config.json` of a flow-matching checkpoint (diffusers'
/// `FlowMatchEulerDiscreteScheduler`). Missing keys take the class defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Timesteps are `sigma · num_train_timesteps`.
    pub num_train_timesteps: u32,
    /// Static shift, used when `use_dynamic_shifting` is false.
    pub shift: f64,
    /// Shift by `mu`, which grows linearly with the image sequence length.
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len`.
    pub base_shift: f64,
    /// `mu` at `max_image_seq_len`.
    pub max_shift: f64,
    /// Sequence length where `mu = base_shift`.
    pub base_image_seq_len: u32,
    /// Sequence length where `mu = max_shift`.
    pub max_image_seq_len: u32,
    /// If set, stretch the schedule so that its last sigma is this value.
    pub shift_terminal: Option<f64>,
    /// Dynamic shift function.
    pub time_shift_type: TimeShift,
    /// Unsupported when true (rejected by [`SchedulerConfig::from_file`]).
    pub invert_sigmas: bool,
    /// Unsupported when true.
    pub stochastic_sampling: bool,
    /// Unsupported when true.
    pub use_karras_sigmas: bool,
    /// Unsupported when true.
    pub use_exponential_sigmas: bool,
    /// Unsupported when true.
    pub use_beta_sigmas: bool,
}

impl Default for SchedulerConfig {
    /// diffusers' class defaults (checkpoints override several of them).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            shift_terminal: None,
            time_shift_type: TimeShift::Exponential,
            invert_sigmas: false,
            stochastic_sampling: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
        }
    }
}

/// How the dynamic shift maps a sigma, given `mu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShift {
    /// `e^mu / (e^mu + (1/s − 1))`.
    Exponential,
    /// `mu / (mu + (1/s − 1))`.
    Linear,
}

/// Sigmas and timesteps of one sampling run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `N + 1` noise levels, decreasing, the last one 0.
    pub sigmas: Vec<f32>,
    /// `N` timesteps, `sigmas[i] · num_train_timesteps`.
    pub timesteps: Vec<f32>,
}

impl Schedule {
    /// Number of steps `N`.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// `sigmas[i + 1] − sigmas[i]` (f32, negative): the step size of Euler step `i`.
    pub fn dt(&self, i: usize) -> f32 {
        self.sigmas[i + 1] - self.sigmas[i]
    }
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`; rejects options the runtime does not implement.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SchedulerError> {
        let path = path.as_ref();
        let text = crate::files::read_regular(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SchedulerError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                SchedulerError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| SchedulerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let unsupported = [
            (config.invert_sigmas, "invert_sigmas"),
            (config.stochastic_sampling, "stochastic_sampling"),
            (config.use_karras_sigmas, "use_karras_sigmas"),
            (config.use_exponential_sigmas, "use_exponential_sigmas"),
            (config.use_beta_sigmas, "use_beta_sigmas"),
        ];
        if let Some((_, option)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(SchedulerError::Unsupported {
                path: path.to_path_buf(),
                option: (*option).to_owned(),
            });
        }
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(SchedulerError::Invalid {
                reason: format!("{}: {}", path.display(), problems.join("; ")),
            });
        }
        Ok(config)
    }

    /// Every value out of range, by field: `num_train_timesteps` ≥ 1; `shift` positive and
    /// finite in f32 (the schedule runs in f32); `base_shift` / `max_shift` finite, and for
    /// the exponential shift small enough that `e^mu` is a positive finite f32 (|mu| < 87);
    /// `shift_terminal` in [0, 1); distinct sequence lengths under the dynamic shift. Every
    /// value is checked, used by this config or not.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, value: String, expected: &str| {
            problems.push(format!("`{field}` is {value}, expected {expected}"));
        };
        if self.num_train_timesteps == 0 {
            bad("num_train_timesteps", "0".into(), "at least 1");
        }
        if !(self.shift > 0.0 && (self.shift as f32).is_finite()) {
            bad(
                "shift",
                format!("{:?}", self.shift),
                "a positive number (finite in f32)",
            );
        }
        for (field, mu) in [
            ("base_shift", self.base_shift),
            ("max_shift", self.max_shift),
        ] {
            let ok = match self.time_shift_type {
                TimeShift::Exponential => mu.abs() < 87.0,
                TimeShift::Linear => (mu as f32).is_finite(),
            };
            if !ok {
                let expected = match self.time_shift_type {
                    TimeShift::Exponential => "a number between -87 and 87 (e^mu in f32)",
                    TimeShift::Linear => "a finite number",
                };
                bad(field, format!("{mu:?}"), expected);
            }
        }
        if let Some(t) = self.shift_terminal {
            if !(0.0..1.0).contains(&t) {
                bad("shift_terminal", format!("{t:?}"), "a number in [0, 1)");
            }
        }
        if self.use_dynamic_shifting && self.max_image_seq_len == self.base_image_seq_len {
            bad(
                "max_image_seq_len",
                self.max_image_seq_len.to_string(),
                "a length other than base_image_seq_len (mu is a line through both)",
            );
        }
        problems
    }

    /// This config with a static shift instead of the dynamic one (as ComfyUI-style
    /// front-ends use, e.g. shift 3). The terminal stretch, if any, stays.
    pub fn with_static_shift(mut self, shift: f64) -> Self {
        self.use_dynamic_shifting = false;
        self.shift = shift;
        self
    }

    /// The Lightning (distilled) variant: `base_shift = max_shift = ln 3`, so `mu = ln 3` at
    /// every resolution, and no terminal stretch; sigmas become `3s / (1 + 2s)`.
    pub fn lightning(mut self) -> Self {
        self.use_dynamic_shifting = true;
        self.time_shift_type = TimeShift::Exponential;
        self.base_shift = 3f64.ln();
        self.max_shift = 3f64.ln();
        self.shift_terminal = None;
        self
    }

    /// `mu` for an image of `image_seq_len` packed tokens: the line through
    /// `(base_image_seq_len, base_shift)` and `(max_image_seq_len, max_shift)`, not clamped.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (f64::from(self.max_image_seq_len) - f64::from(self.base_image_seq_len));
        let b = self.base_shift - m * f64::from(self.base_image_seq_len);
        image_seq_len as f64 * m + b
    }

    /// The schedule of `steps` Euler steps for an image of `image_seq_len` packed tokens
    /// (ignored under a static shift). See the module docs, also for `steps == 1`.
    pub fn schedule(&self, steps: usize, image_seq_len: usize) -> Result<Schedule, SchedulerError> {
        self.check()?;
        if steps == 0 {
            return Err(SchedulerError::ZeroSteps);
        }
        let mut sigmas: Vec<f32> = linspace(1.0, 1.0 / steps as f64, steps)
            .into_iter()
            .map(|s| s as f32)
            .collect();

        if self.use_dynamic_shifting {
            let mu = self.mu(image_seq_len);
            // Python scalars meet float32 arrays: they are rounded to f32 first.
            let (num, add) = match self.time_shift_type {
                TimeShift::Exponential => (mu.exp() as f32, mu.exp() as f32),
                TimeShift::Linear => (mu as f32, mu as f32),
            };
            for s in &mut sigmas {
                *s = num / (add + (1.0 / *s - 1.0));
            }
        } else {
            let shift = self.shift as f32;
            let shift_m1 = (self.shift - 1.0) as f32;
            for s in &mut sigmas {
                *s = shift * *s / (1.0 + shift_m1 * *s);
            }
        }

        if let (Some(terminal), true) = (self.shift_terminal, steps > 1) {
            let last = 1.0 - sigmas[steps - 1];
            let scale = last / (1.0 - terminal) as f32;
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }

        // A line through far-apart points can still carry mu past what f32 holds for a
        // long image sequence.
        if let Some(s) = sigmas.iter().find(|s| !(0.0..=1.0).contains(*s)) {
            return Err(SchedulerError::Invalid {
                reason: format!(
                    "the schedule of {steps} steps for {image_seq_len} image tokens has sigma {s}, outside [0, 1]"
                ),
            });
        }
        let scale = self.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|&s| s * scale).collect();
        sigmas.push(0.0);
        Ok(Schedule { sigmas, timesteps })
    }

    fn check(&self) -> Result<(), SchedulerError> {
        let invalid = |reason: String| Err(SchedulerError::Invalid { reason });
        if self.use_dynamic_shifting && self.max_image_seq_len == self.base_image_seq_len {
            return invalid(format!(
                "base_image_seq_len and max_image_seq_len are both {}, so mu is undefined",
                self.base_image_seq_len
            ));
        }
        if !self.use_dynamic_shifting && (self.shift.is_nan() || self.shift <= 0.0) {
            return invalid(format!("static shift {} is not positive", self.shift));
        }
        if let Some(t) = self.shift_terminal {
            if !(0.0..1.0).contains(&t) {
                return invalid(format!("shift_terminal {t} is outside [0, 1)"));
            }
        }
        Ok(())
    }
}

/// numpy's `linspace(start, stop, n)` in f64: `i · step + start`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// One Euler step in place: `x ← x + (sigma_next − sigma) · v`, all f32 (the step size is
/// rounded to f32 first, the product and the sum are separate roundings, as in diffusers).
pub fn euler_step(sample: &mut [f32], velocity: &[f32], sigma: f32, sigma_next: f32) {
    assert_eq!(sample.len(), velocity.len(), "sample and velocity lengths");
    let dt = sigma_next - sigma;
    for (x, &v) in sample.iter_mut().zip(velocity) {
        *x += dt * v;
    }
}

/// [`euler_step`] on MLX arrays, lazily (no evaluation), with diffusers' dtype handling:
/// the sample is taken to f32, `dt · v` is rounded to the velocity's dtype (torch multiplies
/// a bf16 tensor by an f32 scalar in bf16), the sum is f32, and the result is cast to the
/// velocity's dtype. For f32 arrays this is exactly [`euler_step`].
pub fn euler_step_array(
    sample: &Array,
    velocity: &Array,
    sigma: f32,
    sigma_next: f32,
) -> Result<Array, Exception> {
    let dtype = velocity.dtype();
    let dt = Array::from_f32(sigma_next - sigma);
    let update = velocity.as_type::<f32>()?.multiply(dt)?.as_dtype(dtype)?;
    let x = sample.as_type::<f32>()?.add(update.as_type::<f32>()?)?;
    x.as_dtype(dtype)
}
