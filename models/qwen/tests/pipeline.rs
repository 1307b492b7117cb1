//! The whole pipeline (template, tokenizer, generated text encoder, 34-row drop, schedule,
//! generated transformer with true CFG, Euler, unpack, de-normalisation, generated VAE
//! decoder, 8-bit RGB) against diffusers' `QwenImagePipeline` on the tiny checkpoint, f32 on
//! the CPU, at both resolutions of `references/pipeline.safetensors`. Prompt, negative
//! prompt, steps and CFG scale come from the fixture's metadata, the initial latents from
//! its `<res>.input.latents`.

mod common;

use common::{fixture, rel_err};
use qwen::pipeline::{
    Event, Options, Pipeline, PipelineError, Request, Resolution, Warning, MAX_SEQUENCE_LENGTH,
};
use qwen_runtime::__private::mlx_rs::{Array, Dtype};
use qwen_runtime::Checkpoint;
use safetensors::SafeTensors;

/// Relative error bound for latents, embeddings and the decoded image (f32 end to end; the
/// module parity tests reach 1e-6..1e-5 per network).
const TOL: f32 = 1e-4;

struct Reference {
    ck: Checkpoint,
    prompt: String,
    negative: String,
    steps: usize,
    cfg: f32,
}

fn reference() -> Reference {
    let path = fixture("references/pipeline.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    Reference {
        ck: Checkpoint::open(&path).unwrap(),
        prompt: meta["prompt"].clone(),
        negative: meta["negative_prompt"].clone(),
        steps: meta["num_inference_steps"].parse().unwrap(),
        cfg: meta["true_cfg_scale"].parse().unwrap(),
    }
}

impl Reference {
    /// The reference run's request, from the initial latents of resolution `res`.
    fn request(&self, res: &str) -> Request {
        Request {
            prompt: self.prompt.clone(),
            negative_prompt: Some(self.negative.clone()),
            steps: self.steps,
            cfg_scale: self.cfg,
            seed: 0,
            latents: Some(self.ck.array(&format!("{res}.input.latents")).unwrap()),
        }
    }
}

fn open(res: &str, module: Option<&str>) -> Pipeline {
    let options = Options {
        resolution: Some(res.parse::<Resolution>().unwrap()),
        dtype: Dtype::Float32,
        module: module.map(str::to_owned),
        ..Options::default()
    };
    Pipeline::open(fixture("tiny-qwen-image"), &options).unwrap()
}

fn u8s(a: &Array) -> Vec<u8> {
    a.as_dtype(Dtype::Uint8).unwrap().as_slice::<u8>().to_vec()
}

/// Runs the pipeline at `res` (optionally forcing a module) and checks every stage.
fn check(res: &str, module: Option<&str>) {
    let r = reference();
    let get = |k: &str| r.ck.array(&format!("{res}.{k}")).unwrap();
    let pipeline = open(res, module);
    let name = pipeline.variant().name();

    // prompt embeddings (dropped, cut) against encode_prompt's
    let mut warnings = Vec::new();
    let emb = pipeline
        .encode(&r.prompt, Some(&r.negative), &mut warnings)
        .unwrap();
    let e_p = rel_err(&emb.prompt, &get("prompt_embeds"));
    let e_n = rel_err(
        emb.negative.as_ref().unwrap(),
        &get("negative_prompt_embeds"),
    );
    assert!(warnings.is_empty(), "{warnings:?}");

    let mut seen = Vec::new();
    let request = r.request(res);
    let g = pipeline
        .generate(&request, &mut |event| match event {
            Event::Step { done, total } => seen.push((done, total)),
            Event::Warning(w) => panic!("unexpected warning {w}"),
        })
        .unwrap();
    assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    // MLX's peak after each stage, in order
    let stages: Vec<&str> = g.peaks.iter().map(|p| p.0).collect();
    assert_eq!(
        stages,
        ["encode", "modulation", "denoiser", "denoise", "decode"]
    );
    // once the denoiser is loaded, the peak holds at least its weights
    let denoiser = pipeline.memory_sizes().denoiser;
    assert!(
        g.peaks[2].1 >= denoiser && denoiser > 0,
        "{:?} vs {denoiser}",
        g.peaks
    );
    let e_lat = rel_err(&g.latents, &get("output.latents"));
    let e_dec = rel_err(&g.decoded, &get("output.decoded"));

    let ours = &g.image.pixels;
    let theirs = u8s(&get("output.image_uint8"));
    assert_eq!(ours.len(), theirs.len());
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap();
    let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    println!(
        "pipeline {res} ({name}): prompt_embeds {e_p:.3e}, negative {e_n:.3e}, final latents {e_lat:.3e}, \
         decoded {e_dec:.3e}, uint8 max |diff| {max_diff} ({differing} of {} values differ)",
        ours.len()
    );
    assert!(e_p <= TOL && e_n <= TOL, "embeddings {e_p:.3e} {e_n:.3e}");
    assert!(e_lat <= TOL, "final latents {e_lat:.3e}");
    assert!(e_dec <= TOL, "decoded {e_dec:.3e}");
    assert!(max_diff <= 1, "uint8 max diff {max_diff}");
    assert_eq!((g.image.width as usize, g.image.height as usize), {
        let r: Resolution = res.parse().unwrap();
        (r.width, r.height)
    });
}

#[test]
fn pipeline_64x64_matches_diffusers() {
    check("64x64", None);
}

#[test]
fn pipeline_96x64_matches_diffusers_both_cfg_halves_in_one_call() {
    check("96x64", Some("res96x64_tiny_split"));
}

#[test]
fn pipeline_96x64_matches_diffusers_with_two_transformer_calls() {
    check("96x64", Some("res96x64_tiny"));
}

#[test]
fn long_prompt_is_cut_as_the_reference_does_and_warned() {
    let tokens = fixture("references/tokens.safetensors");
    let bytes = std::fs::read(&tokens).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let prompts: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["prompts"]).unwrap();
    let long = &prompts[9];

    let pipeline = open("64x64", None);
    let ids = pipeline.token_ids(long).unwrap();
    assert_eq!(ids.len(), 1058);

    let mut warnings = Vec::new();
    let emb = pipeline.encode(long, None, &mut warnings).unwrap();
    assert_eq!(emb.prompt.shape(), &[1, MAX_SEQUENCE_LENGTH as i32, 32]);
    let r = Checkpoint::open(fixture("references/text_encoder.safetensors")).unwrap();
    let e = rel_err(&emb.prompt, &r.array("long.prompt_embeds").unwrap());
    println!("long prompt (4129 tokens): embeds [1, 512, 32] rel err {e:.3e}");
    assert!(e <= TOL, "{e:.3e}");
    assert!(
        matches!(
            warnings.as_slice(),
            [Warning::Truncated { which: "prompt", tokens, kept: 512 }] if *tokens > 4000
        ),
        "{warnings:?}"
    );
    println!("warning: {}", warnings[0]);
}

#[test]
fn empty_prompt_warns_and_runs_like_the_reference() {
    let pipeline = open("64x64", None);
    let mut warnings = Vec::new();
    let emb = pipeline.encode("", Some(" "), &mut warnings).unwrap();
    // template with an empty prompt: 39 tokens, 34 dropped
    assert_eq!(emb.prompt.shape(), &[1, 5, 32]);
    assert_eq!(
        warnings,
        vec![Warning::EmptyPrompt { which: "prompt" }],
        "the blank negative prompt is the recommended one and gets no warning"
    );
}

#[test]
fn unsupported_resolution_lists_the_available_ones() {
    let options = Options {
        resolution: Some(Resolution {
            width: 128,
            height: 128,
        }),
        ..Options::default()
    };
    let err = Pipeline::open(fixture("tiny-qwen-image"), &options).unwrap_err();
    assert!(matches!(err, PipelineError::UnsupportedResolution { .. }));
    assert_eq!(
        err.to_string(),
        "no generated module for 128x128 with the tiny config; available: 96x64, 64x64"
    );
}

#[test]
fn seeded_noise_is_reproducible_and_standard_normal() {
    let pipeline = open("96x64", None);
    let a = pipeline.noise(7).unwrap();
    let b = pipeline.noise(7).unwrap();
    let c = pipeline.noise(8).unwrap();
    assert_eq!(a.shape(), &[1, 24, 64]);
    // latents of another size are refused by the decoder with their shape, not inside MLX
    let e = pipeline
        .decode(&open("64x64", None).noise(7).unwrap())
        .unwrap_err();
    assert!(matches!(&e, PipelineError::LatentsShape { .. }), "{e}");
    assert!(pipeline.decode(&a).is_ok());
    let (a, b, c) = (
        a.as_slice::<f32>().to_vec(),
        b.as_slice::<f32>().to_vec(),
        c.as_slice::<f32>().to_vec(),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
    assert!(mean.abs() < 0.2 && (var - 1.0).abs() < 0.25, "{mean} {var}");
}

/// Without CFG (scale 1) the joint module runs the prompt in both halves and keeps one; it
/// must give what the one-text module gives with a single call per step.
#[test]
fn no_cfg_is_the_same_through_either_module() {
    let r = reference();
    let latents = r.ck.array("96x64.input.latents").unwrap();
    let run = |module: &str| {
        let request = Request {
            prompt: r.prompt.clone(),
            negative_prompt: Some(r.negative.clone()),
            steps: 2,
            cfg_scale: 1.0,
            seed: 0,
            latents: Some(latents.clone()),
        };
        open("96x64", Some(module))
            .generate(&request, &mut |_| {})
            .unwrap()
    };
    let (split, single) = (run("res96x64_tiny_split"), run("res96x64_tiny"));
    let e = rel_err(&split.latents, &single.latents);
    println!("no cfg: joint module vs one-text module, latents rel err {e:.3e}");
    assert!(e <= 1e-5, "{e:.3e}");
}

/// `count` images of one request are the images of `count` single runs with the seeds
/// `seed, seed + 1, …`, denoised as one batch: through the module of one text per call (with
/// and without CFG) and through the joint-CFG one (both halves of the three images in one
/// call of six rows), with and without a negative pass.
#[test]
fn several_images_are_the_single_runs_with_consecutive_seeds() {
    let r = reference();
    for (module, cfg) in [
        ("res96x64_tiny", 1.0),
        ("res96x64_tiny", 4.0),
        ("res96x64_tiny_split", 4.0),
        ("res96x64_tiny_split", 1.0),
    ] {
        let p = open("96x64", Some(module));
        let request = |seed| Request {
            prompt: r.prompt.clone(),
            negative_prompt: Some(r.negative.clone()),
            steps: 2,
            cfg_scale: cfg,
            seed,
            latents: None,
        };
        let mut steps = 0;
        let many = p
            .generate_images(&request(7), 3, &mut |e| {
                if let Event::Step { .. } = e {
                    steps += 1
                }
            })
            .unwrap();
        assert_eq!(many.len(), 3);
        // one batch: one event per step
        assert_eq!(steps, 2, "{module}");
        for (i, g) in many.iter().enumerate() {
            let single = p.generate(&request(7 + i as u64), &mut |_| {}).unwrap();
            let e = rel_err(&g.latents, &single.latents);
            let max_diff = g
                .image
                .pixels
                .iter()
                .zip(&single.image.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            println!("{module} cfg {cfg}: image {i} of 3 vs its single run: latents {e:.3e}, max {max_diff} levels");
            assert!(
                e <= 1e-5 && max_diff <= 1,
                "{module} cfg {cfg} image {i}: {e:.3e}, {max_diff}"
            );
        }
        // three different images
        assert_ne!(many[0].image.pixels, many[1].image.pixels);
    }
    // a batch that does not fit the memory budget is denoised one image at a time
    let tight = Pipeline::open(
        fixture("tiny-qwen-image"),
        &Options {
            resolution: Some("96x64".parse::<Resolution>().unwrap()),
            dtype: Dtype::Float32,
            module: Some("res96x64_tiny".into()),
            memory_limit: Some(1_000_000),
            ..Options::default()
        },
    )
    .unwrap();
    let mut steps = 0;
    let request = Request {
        steps: 2,
        cfg_scale: 1.0,
        seed: 7,
        ..Request::new(r.prompt.clone())
    };
    let many = tight
        .generate_images(&request, 2, &mut |e| {
            if let Event::Step { .. } = e {
                steps += 1
            }
        })
        .unwrap();
    assert_eq!(steps, 4);
    let single = tight
        .generate(
            &Request {
                seed: 8,
                ..request.clone()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(rel_err(&many[1].latents, &single.latents), 0.0);
    let p = open("96x64", None);
    let given = Request {
        latents: Some(r.ck.array("96x64.input.latents").unwrap()),
        ..Request::new("x")
    };
    assert!(matches!(
        p.generate_images(&given, 2, &mut |_| {}),
        Err(PipelineError::Request(_))
    ));
    assert!(matches!(
        p.generate_images(&Request::new("x"), 0, &mut |_| {}),
        Err(PipelineError::Request(_))
    ));
}

/// bf16 weights and activations: loose agreement with the f32 reference.
#[test]
fn bf16_pipeline_is_close_to_the_f32_reference() {
    let r = reference();
    let options = Options {
        resolution: Some("64x64".parse().unwrap()),
        dtype: Dtype::Bfloat16,
        ..Options::default()
    };
    let pipeline = Pipeline::open(fixture("tiny-qwen-image"), &options).unwrap();
    let request = r.request("64x64");
    let g = pipeline.generate(&request, &mut |_| {}).unwrap();
    let e_lat = rel_err(&g.latents, &r.ck.array("64x64.output.latents").unwrap());
    let e_dec = rel_err(&g.decoded, &r.ck.array("64x64.output.decoded").unwrap());
    println!("pipeline 64x64 bf16 vs f32 reference: latents {e_lat:.3e}, decoded {e_dec:.3e}");
    assert!(e_lat <= 5e-2 && e_dec <= 5e-2, "{e_lat:.3e} {e_dec:.3e}");
}

/// An image's latents as an edit's reference (the VAE encoder, normalised, packed) equal
/// diffusers' `encode` mean normalised `(z − mean) / std` and packed, at the pipeline's size
/// and at another one (the encoder's size is free); a size the packing cannot take is a clear
/// error.
#[test]
fn encode_image_gives_diffusers_normalised_latents_packed() {
    use qwen::pipeline::pack;
    use qwen_runtime::__private::mlx_rs::ops;
    let p = open("96x64", None);
    let r = Checkpoint::open(fixture("references/vae.safetensors")).unwrap();
    for size in ["96x64", "64x64"] {
        let x = r.array(&format!("{size}.encode.input.image")).unwrap(); // [1, 3, 1, H, W]
        let s = x.shape().to_vec();
        let x = ops::reshape(&x, &[1, 3, s[3], s[4]]).unwrap();
        let x = ops::transpose_axes(&x, &[0, 2, 3, 1]).unwrap(); // NHWC
        let ours = p.encode_image(&x).unwrap();
        let z = r
            .array(&format!("{size}.encode.output.latents_normalized"))
            .unwrap(); // [1, 16, 1, h, w]
        let z = ops::reshape(&z, &[1, 16, s[3] / 8, s[4] / 8]).unwrap();
        let theirs = pack(&z, (s[3] / 16) as usize, (s[4] / 16) as usize).unwrap();
        assert_eq!(ours.shape(), theirs.shape());
        let e = rel_err(&ours, &theirs);
        println!("encode_image {size}: rel err {e:.3e}");
        assert!(e <= 1e-4, "{size}: {e:.3e}");
    }
    let odd = Array::zeros::<f32>(&[1, 40, 64, 3]).unwrap();
    let e = p.encode_image(&odd).unwrap_err().to_string();
    assert!(e.contains("multiples of 16"), "{e}");
}

/// `Pipeline::warm_up` (what `open` runs on a GPU while the fused kernels compile) keeps
/// nothing: a pipeline warmed up before its first image makes, from seeded noise, byte for
/// byte the image and the latents of a pipeline that was not, and holds the same networks
/// and sizes after it as before.
#[test]
fn warm_up_changes_no_image() {
    let r = reference();
    let request = Request {
        steps: 2,
        seed: 3,
        latents: None,
        ..r.request("96x64")
    };
    let (plain, warmed) = (open("96x64", None), open("96x64", None));
    let (networks, sizes) = (warmed.loaded_networks(), warmed.memory_sizes());
    warmed.warm_up().unwrap();
    assert_eq!(warmed.loaded_networks(), networks);
    assert_eq!(warmed.memory_sizes(), sizes);
    let run = |p: &Pipeline| p.generate(&request, &mut |_| {}).unwrap();
    let (a, b) = (run(&plain), run(&warmed));
    assert_eq!(a.image.pixels, b.image.pixels);
    assert_eq!(rel_err(&a.latents, &b.latents), 0.0);
}
