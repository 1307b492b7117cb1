//! Builds mlx-c 0.7.0 for Linux against a prebuilt MLX and generates its bindings.
//!
//! 1. Finds MLX: `$MLX_PREFIX` (the folder holding `lib/libmlx.so`, `include/mlx/` and
//!    `share/cmake/MLX/`), else the `mlx` package of the workspace's `.venv` that
//!    `./dev setup` installs.
//! 2. Checks the build tools (cmake, make, a C++ compiler, libclang) before using any of them,
//!    so that a missing one gives one line saying what to install.
//! 3. Takes the pristine mlx-c sources from the published `mlx-sys` 0.7.0 crate archive
//!    (fetched by cargo into its registry cache) and unpacks them into `OUT_DIR`. No
//!    mlx-c source lives in this repository.
//! 4. Applies the Linux fixes (see `fixes`); each fails loudly if it no longer applies.
//! 5. Builds the static `libmlxc.a` with cmake, runs bindgen, and publishes the libmlx
//!    folder as `DEP_MLX_LIBDIR` so that dependents can set an rpath.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The published crate whose archive carries the mlx-c sources this crate binds.
const MLX_SYS_VERSION: &str = "0.7.0";
/// MLX versions the fixed mlx-c sources build against.
const MLX_MINOR: (u32, u32) = (0, 32);

type BuildResult<T> = Result<T, String>;

fn main() {
    if let Err(message) = build() {
        // One line under cargo's own `error:`; cargo then fails the build (and reruns
        // this script next time, so `./dev setup` followed by a rebuild just works).
        let message = message.replace('\n', " ");
        println!("cargo::error={message}");
    }
}

fn build() -> BuildResult<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=MLX_PREFIX");
    println!("cargo::rerun-if-env-changed=CMAKE");
    println!("cargo::rerun-if-env-changed=LIBCLANG_PATH");

    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let mlx = find_mlx()?;
    let cmake = check_tools()?;
    println!(
        "cargo::rerun-if-changed={}",
        mlx.join("include/mlx/version.h").display()
    );

    let mlx_c = unpack_mlx_c(&out_dir)?;
    fixes::apply_all(&mlx_c)?;

    let build_dir = out_dir.join("build");
    build_mlx_c(&cmake, &mlx_c, &mlx, &build_dir)?;
    generate_bindings(&mlx_c, &out_dir.join("bindings.rs"))?;

    let libdir = mlx.join("lib");
    println!("cargo::rustc-link-search=native={}", build_dir.display());
    println!("cargo::rustc-link-lib=static=mlxc");
    println!("cargo::rustc-link-search=native={}", libdir.display());
    println!("cargo::rustc-link-lib=dylib=mlx");
    println!("cargo::rustc-link-lib=dylib=stdc++");
    // Read by dependents as DEP_MLX_LIBDIR / DEP_MLX_PREFIX.
    println!("cargo::metadata=libdir={}", libdir.display());
    println!("cargo::metadata=prefix={}", mlx.display());
    Ok(())
}

// === MLX ===

/// The MLX installation: `$MLX_PREFIX`, else `<workspace>/.venv/lib/python*/site-packages/mlx`.
fn find_mlx() -> BuildResult<PathBuf> {
    let prefix = match env::var_os("MLX_PREFIX") {
        Some(prefix) => PathBuf::from(prefix),
        None => default_prefix().ok_or_else(|| {
            "MLX not found: run `./dev setup` in the repository root (it installs the \
             mlx-cpu==0.32.4 wheel into .venv), or set MLX_PREFIX to the folder holding \
             lib/libmlx.so"
                .to_string()
        })?,
    };
    for needed in [
        "lib/libmlx.so",
        "include/mlx/version.h",
        "share/cmake/MLX/MLXConfig.cmake",
    ] {
        if !prefix.join(needed).is_file() {
            return Err(format!(
                "MLX at {} has no {needed}: run `./dev setup` (installs mlx-cpu==0.32.4 into \
                 .venv) or point MLX_PREFIX at an MLX 0.32 install",
                prefix.display()
            ));
        }
    }
    let version = mlx_version(&prefix.join("include/mlx/version.h"))?;
    if (version.0, version.1) != MLX_MINOR {
        return Err(format!(
            "MLX at {} is {}.{}.{}, mlx-c 0.7.0 needs {}.{}.x: run `./dev setup`",
            prefix.display(),
            version.0,
            version.1,
            version.2,
            MLX_MINOR.0,
            MLX_MINOR.1
        ));
    }
    Ok(prefix)
}

fn default_prefix() -> Option<PathBuf> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    let lib = manifest.parent()?.join(".venv/lib");
    // Sorted so that the choice is stable if several Python versions are present.
    let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("python"))
        })
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|python| python.join("site-packages/mlx"))
        .find(|mlx| mlx.join("lib/libmlx.so").is_file())
}

/// `(major, minor, patch)` from MLX's `version.h`.
fn mlx_version(header: &Path) -> BuildResult<(u32, u32, u32)> {
    let text = read(header)?;
    let field = |name: &str| -> BuildResult<u32> {
        text.lines()
            .find_map(|line| {
                let rest = line.trim().strip_prefix("#define ")?.strip_prefix(name)?;
                rest.trim().parse().ok()
            })
            .ok_or_else(|| format!("{} does not define {name}", header.display()))
    };
    Ok((
        field("MLX_VERSION_MAJOR")?,
        field("MLX_VERSION_MINOR")?,
        field("MLX_VERSION_PATCH")?,
    ))
}

// === Tools ===

/// Checks cmake, make, the C++ compiler and libclang; returns the cmake command.
fn check_tools() -> BuildResult<String> {
    let cmake = env::var("CMAKE").unwrap_or_else(|_| "cmake".to_string());
    if !runs(&cmake, "--version") {
        return Err(format!(
            "`{cmake}` not found: run `./dev setup`, or install it with `apt-get install cmake`"
        ));
    }
    // cmake's default generator ("Unix Makefiles") needs make; without it cmake fails
    // with a wall of "CMAKE_CXX_COMPILER not set" errors that hide the cause.
    if env::var_os("CMAKE_GENERATOR").is_none() && !runs("make", "--version") {
        return Err(
            "`make` not found: run `./dev setup`, or install it with `apt-get install make`"
                .to_string(),
        );
    }
    let cxx = env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    if !runs(&cxx, "--version") {
        return Err(format!(
            "C++ compiler `{cxx}` not found: run `./dev setup`, or install it with \
             `apt-get install g++`"
        ));
    }
    // bindgen would panic with a long backtrace; load libclang here first instead.
    clang_sys::load().map_err(|reason| {
        let reason: String = reason.chars().take(160).collect();
        format!(
            "libclang not found: run `./dev setup`, or install it with \
             `apt-get install libclang-dev` (clang-sys said: {reason}...)"
        )
    })?;
    Ok(cmake)
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

// === mlx-c sources ===

/// Unpacks `src/mlx-c` of the published mlx-sys archive into `OUT_DIR`; returns its path.
fn unpack_mlx_c(out_dir: &Path) -> BuildResult<PathBuf> {
    let archive = match find_crate_archive() {
        Some(archive) => archive,
        None => {
            fetch_crate_archive(out_dir)?;
            find_crate_archive().ok_or_else(|| {
                format!(
                    "`cargo fetch` ran but mlx-sys-{MLX_SYS_VERSION}.crate is not in {}",
                    registry_cache().display()
                )
            })?
        }
    };
    let dest = out_dir.join("mlx-sys-crate");
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(|e| format!("removing {}: {e}", dest.display()))?;
    }
    let file = fs::File::open(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&dest)
        .map_err(|e| format!("unpacking {}: {e}", archive.display()))?;
    let mlx_c = dest.join(format!("mlx-sys-{MLX_SYS_VERSION}/src/mlx-c"));
    if !mlx_c.join("CMakeLists.txt").is_file() {
        return Err(format!("{} holds no src/mlx-c", archive.display()));
    }
    Ok(mlx_c)
}

fn registry_cache() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("registry").join("cache")
}

/// `$CARGO_HOME/registry/cache/<registry>/mlx-sys-0.7.0.crate`, if cargo has it.
fn find_crate_archive() -> Option<PathBuf> {
    let name = format!("mlx-sys-{MLX_SYS_VERSION}.crate");
    let mut found: Vec<PathBuf> = fs::read_dir(registry_cache())
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join(&name)))
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Lets cargo download the archive (and verify its checksum) through a throw-away
/// manifest with its own workspace, so the outer workspace's patch does not apply.
fn fetch_crate_archive(out_dir: &Path) -> BuildResult<()> {
    let dir = out_dir.join("fetch");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let manifest = format!(
        "[package]\nname = \"mlx-c-sources\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[lib]\npath = \"lib.rs\"\n\n[dependencies]\n\
         mlx-sys = \"={MLX_SYS_VERSION}\"\n\n[workspace]\n"
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("lib.rs"), "")?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(&cargo)
        .args(["fetch", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .stdout(io::stderr())
        .status()
        .map_err(|e| format!("running `{cargo} fetch`: {e}"))?;
    if !status.success() {
        return Err(format!(
            "could not download mlx-sys {MLX_SYS_VERSION} from crates.io (it carries the mlx-c \
             sources); check the network, then rebuild"
        ));
    }
    Ok(())
}

// === Linux fixes to mlx-c 0.7.0 ===

mod fixes {
    use super::{read, write, BuildResult};
    use std::path::Path;

    pub fn apply_all(mlx_c: &Path) -> BuildResult<()> {
        no_std_format(&mlx_c.join("mlx/c/private/io.h"))?;
        gather_qmm_global_scale(&mlx_c.join("mlx/c/ops.cpp"))?;
        half_types(&mlx_c.join("mlx/c/half.h"))?;
        Ok(())
    }

    fn stale(file: &Path, fix: &str) -> String {
        format!(
            "the mlx-c fix `{fix}` no longer applies to {}: the sources changed, update \
             mlx-sys/build.rs",
            file.display()
        )
    }

    /// gcc 12's libstdc++ has no `<format>`; mlx-c uses `std::format` only for the
    /// messages of its reader and writer. Swap in a small `{}` substitution.
    fn no_std_format(file: &Path) -> BuildResult<()> {
        const FIX: &str = "std::format in io.h";
        const HELPER: &str = r#"namespace {

// qwen-aot (Linux): stand-in for std::format, which gcc 12's libstdc++ lacks.
inline void linux_format_into(std::ostringstream& out, const char* f) {
  out << f;
}
template <typename T, typename... Rest>
inline void linux_format_into(
    std::ostringstream& out,
    const char* f,
    const T& value,
    const Rest&... rest) {
  for (; *f; ++f) {
    if (f[0] == '{' && f[1] == '}') {
      out << value;
      linux_format_into(out, f + 2, rest...);
      return;
    }
    out << *f;
  }
}
template <typename... Args>
inline std::string linux_format(const char* f, const Args&... args) {
  std::ostringstream out;
  linux_format_into(out, f, args...);
  return out.str();
}
"#;
        let text = read(file)?;
        let calls = text.matches("std::format(").count();
        if calls != 5 || text.matches("namespace {\n").count() != 1 {
            return Err(stale(file, FIX));
        }
        let text = text
            .replace("std::format(", "linux_format(")
            .replace("namespace {\n", HELPER)
            .replace(
                "#include <streambuf>\n",
                "#include <sstream>\n#include <streambuf>\n#include <string>\n",
            );
        if !text.contains("#include <sstream>") {
            return Err(stale(file, FIX));
        }
        write(file, &text)
    }

    /// MLX 0.32.4 added `global_scale` (an optional array) before `sorted_indices` in
    /// `gather_qmm`; mlx-c 0.7.0 was written for 0.32.2 and would pass the bool there.
    fn gather_qmm_global_scale(file: &Path) -> BuildResult<()> {
        const FIX: &str = "gather_qmm global_scale in ops.cpp";
        let text = read(file)?;
        let start = text
            .find("extern \"C\" int mlx_gather_qmm(")
            .and_then(|at| text[at..].find("mlx::core::gather_qmm(").map(|i| at + i))
            .ok_or_else(|| stale(file, FIX))?;
        let anchor = "std::string(mode),\n";
        let at = text[start..]
            .find(anchor)
            .map(|i| start + i + anchor.len())
            .ok_or_else(|| stale(file, FIX))?;
        if !text[at..].trim_start().starts_with("sorted_indices,") {
            return Err(stale(file, FIX));
        }
        let insert = "#if MLX_VERSION_NUMERIC >= 32004\n            std::nullopt,\n#endif\n";
        let mut fixed = String::with_capacity(text.len() + insert.len());
        fixed.push_str(&text[..at]);
        fixed.push_str(insert);
        fixed.push_str(&text[at..]);
        write(file, &fixed)
    }

    /// mlx-c declares `float16_t`/`bfloat16_t` (and the functions using them) only on
    /// ARM; mlx-rs needs both. On other targets they are raw 16-bit patterns.
    fn half_types(file: &Path) -> BuildResult<()> {
        const FIX: &str = "float16_t/bfloat16_t in half.h";
        let text = read(file)?;
        let pairs = [
            (
                "typedef __fp16 float16_t;\n#endif\n",
                "typedef __fp16 float16_t;\n#else\n#define HAS_FLOAT16\n#include <stdint.h>\n\
                 typedef uint16_t float16_t;\n#endif\n",
            ),
            (
                "typedef __bf16 bfloat16_t;\n#endif\n",
                "typedef __bf16 bfloat16_t;\n#else\n#define HAS_BFLOAT16\n#include <stdint.h>\n\
                 typedef uint16_t bfloat16_t;\n#endif\n",
            ),
        ];
        let mut text = text;
        for (from, to) in pairs {
            if text.matches(from).count() != 1 {
                return Err(stale(file, FIX));
            }
            text = text.replace(from, to);
        }
        write(file, &text)
    }
}

// === cmake and bindgen ===

fn build_mlx_c(cmake: &str, mlx_c: &Path, mlx: &Path, build_dir: &Path) -> BuildResult<()> {
    let mut configure = Command::new(cmake);
    configure
        .arg("-S")
        .arg(mlx_c)
        .arg("-B")
        .arg(build_dir)
        .arg("-DCMAKE_BUILD_TYPE=Release")
        .arg("-DMLX_C_USE_SYSTEM_MLX=ON")
        .arg(format!(
            "-DMLX_DIR={}",
            mlx.join("share/cmake/MLX").display()
        ))
        .arg("-DMLX_C_BUILD_EXAMPLES=OFF")
        .arg("-DBUILD_SHARED_LIBS=OFF")
        .arg("-DCMAKE_POSITION_INDEPENDENT_CODE=ON");
    run(&mut configure, "cmake configure of mlx-c")?;
    let jobs = env::var("NUM_JOBS").unwrap_or_else(|_| "2".to_string());
    let mut build = Command::new(cmake);
    build
        .arg("--build")
        .arg(build_dir)
        .args(["--target", "mlxc", "--parallel", &jobs]);
    run(&mut build, "cmake build of mlx-c")?;
    let lib = build_dir.join("libmlxc.a");
    if !lib.is_file() {
        return Err(format!(
            "cmake built mlx-c but {} is missing",
            lib.display()
        ));
    }
    Ok(())
}

/// Runs a tool with its output on stderr (cargo shows it when the build fails).
fn run(command: &mut Command, what: &str) -> BuildResult<()> {
    let status = command
        .stdout(io::stderr())
        .status()
        .map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status}); its output is above"))
    }
}

fn generate_bindings(mlx_c: &Path, out: &Path) -> BuildResult<()> {
    let header_dir = mlx_c.join("mlx/c");
    let mut headers: Vec<PathBuf> = fs::read_dir(&header_dir)
        .map_err(|e| format!("{}: {e}", header_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "h"))
        .collect();
    headers.sort();
    let builder = headers.iter().fold(
        bindgen::Builder::default()
            .clang_arg(format!("-I{}", mlx_c.display()))
            // mlx-rs reads `float16_t` as a tuple struct over the raw bits (its ARM shape).
            .blocklist_type("float16_t")
            .raw_line(
                "#[repr(transparent)]\n\
                 #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]\n\
                 pub struct float16_t(pub u16);",
            )
            // libc's allocator is not ours to declare.
            .blocklist_function("malloc")
            .blocklist_function("realloc"),
        |builder, header| builder.header(header.to_string_lossy()),
    );
    let bindings = builder
        .generate()
        .map_err(|e| format!("bindgen over {}: {e}", header_dir.display()))?;
    bindings
        .write_to_file(out)
        .map_err(|e| format!("{}: {e}", out.display()))
}

// === files ===

fn read(path: &Path) -> BuildResult<String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> BuildResult<()> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
