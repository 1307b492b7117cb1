//! MLX's distributed layer, which mlx-rs does not wrap: a group of processes (ranks), the
//! sum of an array over them and their arrays gathered, through mlx-c's
//! `mlx_distributed_*`. MLX picks the backend:
//! NCCL on CUDA (`MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP`, `NCCL_PORT`), its TCP ring
//! elsewhere (`MLX_RANK`, `MLX_HOSTFILE`: a JSON list, per rank, of `"ip:port"` addresses).
//! Without that environment a process is a group of one.

use std::ffi::CString;

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// A group of processes that compute together.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
}

// SAFETY: the handle names MLX's group object, which MLX shares between threads itself.
unsafe impl Send for Group {}

impl Group {
    /// The group MLX's environment describes (`backend`: `"any"`, `"ring"`, `"nccl"`, …);
    /// `strict`: an error instead of a group of one when no backend can start.
    pub fn init(backend: &str, strict: bool) -> Result<Group, Exception> {
        let bk = CString::new(backend).map_err(|e| Exception::custom(e.to_string()))?;
        // SAFETY: `raw` receives a new handle; `bk` lives through the call.
        unsafe {
            let mut raw = mlx_sys::mlx_distributed_group {
                ctx: std::ptr::null_mut(),
            };
            let status = mlx_sys::mlx_distributed_init(&mut raw, strict, bk.as_ptr());
            if status != 0 || raw.ctx.is_null() {
                return Err(Exception::custom(format!(
                    "could not join a process group (backend {backend})"
                )));
            }
            Ok(Group { raw })
        }
    }

    /// Whether MLX was built with `backend`.
    pub fn is_available(backend: &str) -> bool {
        let Ok(bk) = CString::new(backend) else {
            return false;
        };
        // SAFETY: plain query.
        unsafe { mlx_sys::mlx_distributed_is_available(bk.as_ptr()) }
    }

    /// This process's place in the group, from 0.
    pub fn rank(&self) -> i32 {
        // SAFETY: `raw` is a live group.
        unsafe { mlx_sys::mlx_distributed_group_rank(self.raw) }
    }

    /// How many processes the group has.
    pub fn size(&self) -> i32 {
        // SAFETY: `raw` is a live group.
        unsafe { mlx_sys::mlx_distributed_group_size(self.raw) }
    }

    /// `x` summed over every process of the group (each calls it with an array of the same
    /// shape), on the default stream; lazy like any MLX op.
    pub fn all_sum(&self, x: &Array) -> Result<Array, Exception> {
        // SAFETY: `res` receives a new array; `x`, the group and the stream live through the
        // call; the stream is freed after it.
        unsafe {
            let stream = mlx_rs::Stream::new();
            let mut res = mlx_sys::mlx_array_new();
            let status =
                mlx_sys::mlx_distributed_all_sum(&mut res, x.as_ptr(), self.raw, stream.as_ptr());
            if status != 0 {
                mlx_sys::mlx_array_free(res);
                return Err(Exception::custom(
                    "MLX refused to sum over the process group",
                ));
            }
            Ok(Array::from_ptr(res))
        }
    }
}

impl Group {
    /// `x` of every process of the group joined along axis 0, in rank order (each calls it
    /// with an array of the same shape): `[size·n, ..]` from `[n, ..]`; lazy. The collective
    /// a sequence-parallel attention gathers its keys and values with.
    pub fn all_gather(&self, x: &Array) -> Result<Array, Exception> {
        // SAFETY: as in `all_sum`.
        unsafe {
            let stream = mlx_rs::Stream::new();
            let mut res = mlx_sys::mlx_array_new();
            let status = mlx_sys::mlx_distributed_all_gather(
                &mut res,
                x.as_ptr(),
                self.raw,
                stream.as_ptr(),
            );
            if status != 0 {
                mlx_sys::mlx_array_free(res);
                return Err(Exception::custom(
                    "MLX refused to gather over the process group",
                ));
            }
            Ok(Array::from_ptr(res))
        }
    }

    /// The subgroup of the processes that give the same `color`, ordered by `key` (every
    /// process of the group calls it): e.g. the ranks of one CFG half.
    pub fn split(&self, color: i32, key: i32) -> Result<Group, Exception> {
        // SAFETY: `raw` receives a new handle; the group lives through the call.
        unsafe {
            let mut raw = mlx_sys::mlx_distributed_group {
                ctx: std::ptr::null_mut(),
            };
            let status = mlx_sys::mlx_distributed_group_split(&mut raw, self.raw, color, key);
            if status != 0 || raw.ctx.is_null() {
                return Err(Exception::custom("MLX could not split the process group"));
            }
            Ok(Group { raw })
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by `init` and is freed once.
        unsafe {
            mlx_sys::mlx_distributed_group_free(self.raw);
        }
    }
}
