//! Tensors copied ahead on several threads while a loader consumes them in order.
//!
//! Making an MLX array of a stored tensor is a copy into MLX's memory, and on a CUDA
//! machine that memory is first written by the CPU a page at a time: one thread does about
//! 2 GB/s there, so a 41 GB transformer took ~20 s. [`Checkpoint::staged`] runs the
//! loader with a `get` whose answers were made ahead, in the order the loader asks for
//! them, by a few threads at once, at most [`Staging::ahead_bytes`] ahead of it.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::Checkpoint;
use crate::error::WeightError;

/// How many threads copy ahead, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    /// Threads making copies (0: the loader makes each copy itself when it asks).
    pub threads: usize,
    /// Bytes of copies made and not yet taken, at most (one tensor is always allowed).
    pub ahead_bytes: usize,
}

impl Default for Staging {
    /// One thread per core but one (the loader's own thread evaluates the layers; a cold
    /// `qwen-run` compiles the fused kernels on one more), at least 1, at most 16; 2 GiB ahead.
    fn default() -> Self {
        Staging {
            threads: std::thread::available_parallelism().map_or(4, |n| (n.get() - 1).clamp(1, 16)),
            ahead_bytes: 2 << 30,
        }
    }
}

/// `a` as a copy the GPU makes, on a CUDA GPU; `a` elsewhere. MLX keeps an array made from
/// host bytes in CUDA managed memory, whose pages would move to the GPU by page faults in the
/// first step that reads them (~10 GB/s on an H200, so 5 s of the first image); the copy is
/// evaluated with the loader's layer, so they move at load and the step finds them in place.
pub fn in_gpu_memory(a: Array) -> Result<Array, Exception> {
    if !crate::kernels::cuda_gpu() {
        return Ok(a);
    }
    // x · 1 is x for every value (NaN, ±0, ±inf included), in every dtype
    let one = Array::from_int(1).as_dtype(a.dtype())?;
    a.multiply(one)
}

enum Slot {
    /// Not started.
    Pending,
    /// Being copied (by a worker, or by the loader itself).
    Claimed,
    /// Copied by a worker and counted in `State::ahead`.
    Ready(Result<Array, WeightError>),
    /// Handed out.
    Taken,
}

struct State {
    slots: Vec<Slot>,
    /// No slot before this one is `Pending`.
    next: usize,
    /// Bytes of `Ready` slots and of slots workers are copying.
    ahead: usize,
    stop: bool,
}

struct Shared<'a> {
    ck: &'a Checkpoint,
    names: &'a [String],
    bytes: Vec<usize>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Checkpoint {
    /// Runs `load` with a `get` that answers the tensors of `order` from copies made ahead
    /// by [`Staging::default`] threads. `get` may ask in any order and for names not in
    /// `order` (made when asked); a name asked twice is copied again.
    pub fn staged<T>(
        &self,
        order: &[String],
        load: impl FnOnce(&mut dyn FnMut(&str) -> Result<Array, WeightError>) -> T,
    ) -> T {
        self.staged_with(Staging::default(), order, load)
    }

    /// [`Checkpoint::staged`] with a given [`Staging`].
    pub fn staged_with<T>(
        &self,
        staging: Staging,
        order: &[String],
        load: impl FnOnce(&mut dyn FnMut(&str) -> Result<Array, WeightError>) -> T,
    ) -> T {
        if staging.threads == 0 || order.is_empty() {
            return load(&mut |name| self.array(name));
        }
        // a name listed twice is staged once, at its first place
        let mut seen = std::collections::HashSet::new();
        let order: Vec<String> = order.iter().filter(|n| seen.insert(*n)).cloned().collect();
        let order = order.as_slice();
        let shared = Shared {
            ck: self,
            names: order,
            bytes: order
                .iter()
                .map(|n| self.tensors.get(n).map_or(0, |e| e.bytes.1 - e.bytes.0))
                .collect(),
            state: Mutex::new(State {
                slots: order.iter().map(|_| Slot::Pending).collect(),
                next: 0,
                ahead: 0,
                stop: false,
            }),
            changed: Condvar::new(),
        };
        let index: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..staging.threads {
                scope.spawn(|| shared.work(staging.ahead_bytes));
            }
            // the workers stop when the loader returns, and when it panics (else they would
            // wait for room forever and the scope for them)
            let _stop = StopOnDrop(&shared);
            load(&mut |name| match index.get(name) {
                Some(&i) => shared.take(i),
                None => self.array(name),
            })
        })
    }
}

/// Tells the workers to stop, when dropped.
struct StopOnDrop<'a, 'b>(&'a Shared<'b>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.changed.notify_all();
    }
}

impl Shared<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // no panic happens while the lock is held (a worker's panicking copy is made
        // outside it and undone under it), so a poisoned lock still guards consistent slots
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'g>(
        &self,
        guard: std::sync::MutexGuard<'g, State>,
    ) -> std::sync::MutexGuard<'g, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// A worker: claims the next pending tensor when the budget allows, copies it, repeats.
    fn work(&self, ahead_bytes: usize) {
        loop {
            let i = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    while st.next < st.slots.len() && !matches!(st.slots[st.next], Slot::Pending) {
                        st.next += 1;
                    }
                    let i = st.next;
                    if i == st.slots.len() {
                        return;
                    }
                    if st.ahead == 0 || st.ahead + self.bytes[i] <= ahead_bytes {
                        st.slots[i] = Slot::Claimed;
                        st.ahead += self.bytes[i];
                        break i;
                    }
                    st = self.wait(st);
                }
            };
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.ck.array(&self.names[i])
            }));
            match made {
                Ok(made) => self.lock().slots[i] = Slot::Ready(made),
                Err(panic) => {
                    // give the tensor back (the loader makes it itself, and meets the
                    // panic there if it is the tensor's), then end this worker with it
                    let mut st = self.lock();
                    st.slots[i] = Slot::Pending;
                    st.next = st.next.min(i);
                    st.ahead -= self.bytes[i];
                    drop(st);
                    self.changed.notify_all();
                    std::panic::resume_unwind(panic);
                }
            }
            self.changed.notify_all();
        }
    }

    /// The loader's side: the copy when made, else made here (or waited for when a
    /// worker is making it).
    fn take(&self, i: usize) -> Result<Array, WeightError> {
        let mut st = self.lock();
        loop {
            match std::mem::replace(&mut st.slots[i], Slot::Taken) {
                Slot::Ready(made) => {
                    st.ahead -= self.bytes[i];
                    drop(st);
                    self.changed.notify_all();
                    return made;
                }
                Slot::Pending | Slot::Taken => {
                    drop(st);
                    return self.ck.array(&self.names[i]);
                }
                Slot::Claimed => {
                    st.slots[i] = Slot::Claimed;
                    st = self.wait(st);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::Array;
    use safetensors::tensor::{serialize_to_file, TensorView};

    fn checkpoint(dir: &std::path::Path, n: usize) -> Checkpoint {
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                (0..64u32)
                    .flat_map(|k| (k + 100 * i as u32).to_le_bytes())
                    .collect()
            })
            .collect();
        let views: Vec<(String, TensorView)> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("t{i}"),
                    TensorView::new(safetensors::Dtype::U32, vec![8, 8], d).unwrap(),
                )
            })
            .collect();
        let path = dir.join("m.safetensors");
        serialize_to_file(views, None, &path).unwrap();
        Checkpoint::open(&path).unwrap()
    }

    fn first(a: &Array) -> u32 {
        a.as_slice::<u32>()[0]
    }

    #[test]
    fn every_tensor_arrives_whatever_the_order_asked_and_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint(dir.path(), 12);
        let order: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        // asked in another order than staged, one name twice, one outside `order`; a budget
        // of one tensor (256 bytes) so that workers wait on the loader
        let asked = [3, 0, 1, 11, 2, 2, 4, 5, 6, 7, 8, 9, 10];
        for staging in [
            Staging {
                threads: 3,
                ahead_bytes: 256,
            },
            Staging {
                threads: 8,
                ahead_bytes: 1 << 20,
            },
            Staging {
                threads: 0,
                ahead_bytes: 0,
            },
        ] {
            // and an order that lists a name twice (staged once)
            let mut twice = order[1..].to_vec();
            twice.insert(4, "t2".into());
            for order in [&order[1..], &twice[..]] {
                let got: Vec<u32> = ck.staged_with(staging, order, |get| {
                    asked
                        .iter()
                        .map(|i| first(&get(&format!("t{i}")).unwrap()))
                        .collect()
                });
                assert_eq!(got, asked.map(|i| 100 * i), "{staging:?}");
            }
        }
    }

    /// A loader that panics ends the load with its panic (the workers stop instead of
    /// waiting for room forever), with a budget that keeps them waiting.
    #[test]
    fn a_panicking_loader_does_not_hang_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint(dir.path(), 6);
        let order: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        let staging = Staging {
            threads: 4,
            ahead_bytes: 256,
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ck.staged_with(staging, &order, |get| {
                let _ = get("t0");
                panic!("the loader fails");
            })
        }));
        assert!(run.is_err());
    }

    /// Copies are made ahead: before the loader asks for anything, workers have made the
    /// first tensors (the budget allows all six here).
    #[test]
    fn workers_copy_ahead_of_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint(dir.path(), 6);
        let order: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        let staging = Staging {
            threads: 2,
            ahead_bytes: 1 << 20,
        };
        let ahead = ck.staged_with(staging, &order, |get| {
            let start = std::time::Instant::now();
            // wait (a bounded time) for the workers to have made every copy: the loader has
            // made none yet
            let made = || ck.made.load(std::sync::atomic::Ordering::SeqCst);
            while made() < 6 && start.elapsed() < std::time::Duration::from_secs(10) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let n = made();
            for name in &order {
                get(name).unwrap();
            }
            n
        });
        assert_eq!(ahead, 6);
        // and the loader took those copies instead of making its own
        assert_eq!(ck.made.load(std::sync::atomic::Ordering::SeqCst), 6);
    }

    #[test]
    fn a_missing_name_is_the_error_it_would_be_unstaged() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint(dir.path(), 2);
        let order = vec!["t0".to_string(), "nope".to_string(), "t1".to_string()];
        let (a, b, c) = ck.staged(&order, |get| {
            (
                get("t0").map(|a| first(&a)),
                get("nope"),
                get("t1").map(|a| first(&a)),
            )
        });
        assert_eq!(a.unwrap(), 0);
        assert!(matches!(b, Err(WeightError::TensorNotFound { ref name, .. }) if name == "nope"));
        assert_eq!(c.unwrap(), 100);
    }
}
