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
        all_gather(self.raw, x)
    }

    /// This group as the one generated sequence-parallel code gathers over
    /// ([`gather_sequence`]) on this thread, while the returned scope lives. (Generated code
    /// with a gather gets no `transforms::compile` twin, whose trace would keep the group.)
    pub fn sequence_scope(&self) -> SequenceScope<'_> {
        SequenceScope {
            before: SEQUENCE_GROUP.with(|g| g.replace(Some(self.raw))),
            _group: std::marker::PhantomData,
            _thread: std::marker::PhantomData,
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

/// `mlx_distributed_all_gather` of `x` over the group `raw`.
fn all_gather(raw: mlx_sys::mlx_distributed_group, x: &Array) -> Result<Array, Exception> {
    // SAFETY: as in `Group::all_sum`; `raw` is a live group (a `Group` or a live scope's).
    unsafe {
        let stream = mlx_rs::Stream::new();
        let mut res = mlx_sys::mlx_array_new();
        let status =
            mlx_sys::mlx_distributed_all_gather(&mut res, x.as_ptr(), raw, stream.as_ptr());
        if status != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(Exception::custom(
                "MLX refused to gather over the process group",
            ));
        }
        Ok(Array::from_ptr(res))
    }
}

thread_local! {
    /// The group a live [`SequenceScope`] set on this thread.
    static SEQUENCE_GROUP: std::cell::Cell<Option<mlx_sys::mlx_distributed_group>> =
        const { std::cell::Cell::new(None) };
}

/// While it lives, [`gather_sequence`] and [`sequence_share`] on this thread work over its
/// group ([`Group::sequence_scope`]); then the group before it is back.
#[must_use = "the group holds only while the scope lives"]
pub struct SequenceScope<'g> {
    before: Option<mlx_sys::mlx_distributed_group>,
    _group: std::marker::PhantomData<&'g Group>,
    /// Not `Send`: dropped on the thread whose group it set.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for SequenceScope<'_> {
    fn drop(&mut self) {
        SEQUENCE_GROUP.with(|g| g.set(self.before));
    }
}

/// Where this process stands in a sequence split over `parts` ranks of the scoped group
/// ([`Group::sequence_scope`]): `(share, run)`, its share of the sequence (`rank % parts`)
/// and which run of `parts` consecutive ranks it is in (`rank / parts`; e.g. the CFG half
/// the run computes). Without a scope, `(0, 0)` for one part and an error for more.
pub fn sequence_share(parts: usize) -> Result<(usize, usize), Exception> {
    let Some(raw) = SEQUENCE_GROUP.with(|g| g.get()) else {
        return if parts == 1 {
            Ok((0, 0))
        } else {
            Err(Exception::custom(format!(
                "a sequence split over {parts} ranks, run outside a process group of them"
            )))
        };
    };
    // SAFETY: `raw` is the live group of a live scope on this thread.
    let (rank, size) = unsafe {
        (
            mlx_sys::mlx_distributed_group_rank(raw) as usize,
            mlx_sys::mlx_distributed_group_size(raw) as usize,
        )
    };
    if parts == 0 || size % parts != 0 {
        return Err(Exception::custom(format!(
            "a sequence split over {parts} ranks in a group of {size}: not a multiple"
        )));
    }
    Ok((rank % parts, rank / parts))
}

/// The shares `[.., n, ..]` of a sequence split over `parts` ranks, gathered along `axis`
/// in rank order into `[.., parts·n, ..]`: what generated sequence-parallel code calls
/// (graph-dsl's `GatherSequence`). The group is the scoped one ([`Group::sequence_scope`]);
/// in a group of `parts · G` ranks, each run of `parts` consecutive ranks gathers its own
/// sequence (all ranks gather, and each keeps its run's shares: MLX's NCCL backend cannot
/// split a group). Lazy like any MLX op; every rank of the group must call it in the same
/// order with arrays of one shape. With one part and no scope, `x` itself.
pub fn gather_sequence(x: &Array, axis: i32, parts: i32) -> Result<Array, Exception> {
    let parts_u = usize::try_from(parts)
        .map_err(|_| Exception::custom(format!("a sequence in {parts} parts")))?;
    if parts_u == 1 {
        return Ok(x.clone()); // the whole sequence is here
    }
    let (_, run) = sequence_share(parts_u)?;
    let raw = SEQUENCE_GROUP
        .with(|g| g.get())
        .ok_or_else(|| Exception::custom("a sequence gathered outside a process group"))?;
    let rank = x.ndim() as i32;
    if !(0..rank).contains(&axis) {
        return Err(Exception::custom(format!(
            "gather_sequence: no axis {axis} in an array of {rank} axes"
        )));
    }
    // the sequence axis first (MLX gathers along axis 0), contiguous for the collective
    let to_front: Vec<i32> = std::iter::once(axis)
        .chain((0..rank).filter(|&a| a != axis))
        .collect();
    let front = if axis == 0 {
        x.clone()
    } else {
        mlx_rs::ops::transpose_axes(x, &to_front)?.contiguous()?
    };
    let mut all = all_gather(raw, &front)?;
    let n = x.shape()[axis as usize];
    // SAFETY: as in `sequence_share`.
    let size = unsafe { mlx_sys::mlx_distributed_group_size(raw) };
    if size != parts {
        let start = run as i32 * parts * n;
        let idx = mlx_rs::ops::arange::<_, i32>(start, start + parts * n, None)?;
        all = all.take_axis(&idx, 0)?;
    }
    if axis == 0 {
        return Ok(all);
    }
    // back: the inverse of `to_front`
    let mut back = vec![0i32; rank as usize];
    for (i, &a) in to_front.iter().enumerate() {
        back[a as usize] = i as i32;
    }
    mlx_rs::ops::transpose_axes(&all, &back)
}
