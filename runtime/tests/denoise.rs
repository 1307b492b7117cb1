//! The runtime's pieces of one denoise loop against the diffusers pipeline run in
//! `tests/fixtures/references/pipeline.safetensors`: schedule, true CFG (scale 4), Euler
//! steps, fed with the pipeline's own transformer outputs.

mod common;

use common::{fixture_path, rel_error, Fixture};
use qwen_runtime::__private::mlx_rs::Array;
use qwen_runtime::guidance::true_cfg;
use qwen_runtime::scheduler::euler_step_array;
use qwen_runtime::SchedulerConfig;

fn array(fx: &Fixture, name: &str) -> Array {
    let (shape, values) = fx.f32(name);
    let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    Array::from_slice(&values, &dims)
}

#[test]
fn three_cfg_steps_reproduce_the_pipeline_latents() {
    let fx = Fixture::reference("pipeline.safetensors");
    let meta = fx.metadata();
    let scale: f32 = meta["true_cfg_scale"].parse().unwrap();
    let steps: usize = meta["num_inference_steps"].parse().unwrap();
    let config = SchedulerConfig::from_file(fixture_path(
        "tiny-qwen-image/scheduler/scheduler_config.json",
    ))
    .unwrap();

    for res in ["64x64", "96x64"] {
        let mut x = array(&fx, &format!("{res}.input.latents"));
        let len = x.shape()[1] as usize;
        let schedule = config.schedule(steps, len).unwrap();
        let (_, sigmas) = fx.f32(&format!("{res}.sigmas"));
        let (_, timesteps) = fx.f32(&format!("{res}.timesteps"));
        assert_eq!(schedule.sigmas, sigmas, "{res}");
        assert_eq!(schedule.timesteps, timesteps, "{res}");

        let mut worst = 0.0f64;
        for i in 0..steps {
            let cond = array(&fx, &format!("{res}.step{i}.noise_pred_cond"));
            let uncond = array(&fx, &format!("{res}.step{i}.noise_pred_uncond"));
            let v = true_cfg(&cond, &uncond, scale).unwrap();
            x = euler_step_array(&x, &v, schedule.sigmas[i], schedule.sigmas[i + 1]).unwrap();
            let (_, want) = fx.f32(&format!("{res}.step{i}.latents"));
            let err = rel_error(x.as_slice::<f32>(), &want);
            assert!(err <= 1e-6, "{res} step {i}: rel {err:e}");
            worst = worst.max(err);
        }
        let (_, want) = fx.f32(&format!("{res}.output.latents"));
        let err = rel_error(x.as_slice::<f32>(), &want);
        assert!(err <= 1e-6, "{res} output: rel {err:e}");
        eprintln!("{res}: latents after each step, max rel {worst:e}");
    }
}
