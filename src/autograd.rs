//! The autograd tape: define-by-run, reverse mode.
//!
//! Each op that has an input needing a gradient appends a node to the
//! current thread's tape: the ids of its inputs and outputs, the tensors its
//! backward needs (`saved`), and the backward itself. Saving a tensor whose
//! storage is an op output (tag Temporary) retags that storage Activation;
//! when the last node that saved it is gone the tag goes back, so the
//! arena's Activation bytes are exactly the bytes the tape keeps alive.
//!
//! [`backward`] walks the tape once, newest node first. A node's saved
//! tensors are dropped as soon as it has run, an intermediate gradient as
//! soon as the node that produced its tensor consumed it, and leaves add
//! their gradient into `.grad` (tag Gradient), which is what gradient
//! accumulation relies on. Nothing is recorded under [`no_grad`].
//!
//! The tape is thread-local: ops are called from one thread, and only their
//! kernels fan out to rayon workers.

use crate::alloc::Tag;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Computes input gradients from the saved tensors and output gradients.
/// Returns one entry per op input (`None` where no gradient flows).
pub type BackwardFn = Box<dyn FnOnce(&[Tensor], &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>>>;

enum Target {
    /// A parameter or other leaf: the gradient goes into its `.grad`.
    Leaf(Tensor),
    /// An op output: the gradient flows on to the node that made it.
    Output(u64),
}

struct Node {
    op: &'static str,
    inputs: Vec<Option<Target>>,
    input_shapes: Vec<Vec<usize>>,
    outputs: Vec<u64>,
    saved: Vec<Tensor>,
    backward: Option<BackwardFn>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static TAPE: RefCell<Vec<Node>> = const { RefCell::new(Vec::new()) };
    static SAVED: Cell<(usize, usize)> = const { Cell::new((0, 0)) }; // (current, peak) bytes
}

/// Restores the previous grad mode when dropped.
pub struct GradModeGuard {
    prev: bool,
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Record again until the guard is dropped (inside a backward that re-runs a
/// segment).
pub fn enable_grad() -> GradModeGuard {
    GradModeGuard { prev: GRAD_ENABLED.with(|g| g.replace(true)) }
}

/// Record nothing until the guard is dropped (evaluation keeps no activations).
pub fn no_grad() -> GradModeGuard {
    GradModeGuard { prev: GRAD_ENABLED.with(|g| g.replace(false)) }
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Whether an op over these inputs will be recorded.
pub fn needs_grad(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad_flag())
}

/// Record an op with one output. Returns the output to hand to the caller
/// (marked as requiring grad when recorded).
pub fn record(
    op: &'static str,
    inputs: &[&Tensor],
    output: Tensor,
    saved: Vec<Tensor>,
    backward: impl FnOnce(&[Tensor], &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Tensor {
    record_many(op, inputs, vec![output], saved, backward).pop().expect("one output")
}

/// Record an op with several outputs.
pub fn record_many(
    op: &'static str,
    inputs: &[&Tensor],
    outputs: Vec<Tensor>,
    saved: Vec<Tensor>,
    backward: impl FnOnce(&[Tensor], &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Vec<Tensor> {
    if !needs_grad(inputs) {
        return outputs;
    }
    let outputs: Vec<Tensor> = outputs.iter().map(|t| t.as_op_output()).collect();
    let targets = inputs
        .iter()
        .map(|t| match (t.requires_grad_flag(), t.is_leaf()) {
            (false, _) => None,
            (true, true) => Some(Target::Leaf((*t).clone())),
            (true, false) => Some(Target::Output(t.id())),
        })
        .collect();
    for t in &saved {
        save(t);
    }
    let node = Node {
        op,
        inputs: targets,
        input_shapes: inputs.iter().map(|t| t.shape().to_vec()).collect(),
        outputs: outputs.iter().map(|t| t.id()).collect(),
        saved,
        backward: Some(Box::new(backward)),
    };
    TAPE.with(|t| t.borrow_mut().push(node));
    outputs
}

fn save(t: &Tensor) {
    let s = t.storage();
    if s.saves.fetch_add(1, Ordering::Relaxed) == 0 && s.block().tag() == Tag::Temporary {
        s.block().arena().retag(s.block(), Tag::Activation, "save");
        SAVED.with(|c| {
            let (cur, peak) = c.get();
            let cur = cur + s.block().requested();
            c.set((cur, peak.max(cur)));
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The backward (if it never ran) may hold clones of saved tensors:
        // drop it first so "still alive" below means alive elsewhere.
        self.backward = None;
        let weak: Vec<Weak<crate::tensor::Storage>> = self.saved.iter().map(|t| Arc::downgrade(t.storage())).collect();
        let was: Vec<bool> = self.saved.iter().map(|t| t.storage().block().tag() == Tag::Activation).collect();
        let mut released = Vec::new();
        for t in &self.saved {
            if t.storage().saves.fetch_sub(1, Ordering::Relaxed) == 1 {
                released.push(t.storage().block().requested());
            } else {
                released.push(0);
            }
        }
        self.saved.clear();
        for ((w, was_act), bytes) in weak.iter().zip(was).zip(released) {
            if !was_act || bytes == 0 {
                continue;
            }
            SAVED.with(|c| {
                let (cur, peak) = c.get();
                c.set((cur - bytes, peak));
            });
            if let Some(s) = w.upgrade() {
                if s.saves.load(Ordering::Relaxed) == 0 {
                    s.block().arena().retag(s.block(), Tag::Temporary, "unsave");
                }
            }
        }
    }
}

/// Bytes of storage the tape holds as activations now, and at its fullest
/// since [`reset_saved_peak`].
pub fn saved_bytes() -> (usize, usize) {
    SAVED.with(|c| c.get())
}

pub fn reset_saved_peak() {
    SAVED.with(|c| {
        let (cur, _) = c.get();
        c.set((cur, cur));
    });
}

/// A storage the tape keeps alive for backward, as [`saved_storages`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedStorage {
    /// Pool and offset of its block (see [`crate::alloc::Block::location`]).
    pub location: (&'static str, usize),
    /// Allocated (rounded) bytes of its block.
    pub bytes: usize,
    pub requested: usize,
    /// Nodes that save it (views of one storage count as that storage).
    pub nodes: usize,
}

/// Every storage this thread's tape saves, each once, in the order first
/// saved. Built by walking the tape, not from the counters that saving
/// keeps, so tests can hold one against the other.
///
/// ```
/// use headroom::{autograd::saved_storages, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let w = Tensor::full(&arena, &[4, 4], 0.5, DType::F32, Tag::Parameter).unwrap().requires_grad();
/// let h = w.mul_scalar(2.0).unwrap(); // an op output...
/// let y = h.mul(&h).unwrap();         // ...saved (twice) by mul
/// let saved = saved_storages();
/// assert_eq!(saved.len(), 1);
/// assert_eq!((saved[0].bytes, saved[0].nodes), (512, 1));
/// # drop(y); headroom::autograd::clear_tape();
/// ```
pub fn saved_storages() -> Vec<SavedStorage> {
    TAPE.with(|tape| {
        let mut out: Vec<SavedStorage> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for node in tape.borrow().iter() {
            let mut seen_here = Vec::new();
            for t in &node.saved {
                let key = Arc::as_ptr(t.storage()) as usize;
                if seen_here.contains(&key) {
                    continue;
                }
                seen_here.push(key);
                match index.get(&key) {
                    Some(&i) => out[i].nodes += 1,
                    None => {
                        let b = t.storage().block();
                        index.insert(key, out.len());
                        out.push(SavedStorage {
                            location: b.location(),
                            bytes: b.size(),
                            requested: b.requested(),
                            nodes: 1,
                        });
                    }
                }
            }
        }
        out
    })
}

/// Number of nodes on this thread's tape.
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().len())
}

/// Drop everything recorded (e.g. after an out-of-memory step).
pub fn clear_tape() {
    let nodes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop(nodes);
}

/// Back-propagate from a one-element `loss` (gradient 1).
///
/// ```
/// use headroom::{autograd::backward, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let w = Tensor::from_f32(&arena, &[2], &[3.0, -1.0], DType::F32, Tag::Parameter).unwrap().requires_grad();
/// let loss = w.mul(&w).unwrap().sum_all().unwrap(); // Σ w²
/// backward(&loss).unwrap();
/// assert_eq!(w.grad().unwrap().to_vec_f32().unwrap(), vec![6.0, -2.0]);
/// assert_eq!(arena.stats().tag(Tag::Activation).allocated.current, 0); // nothing kept
/// ```
pub fn backward(loss: &Tensor) -> Result<()> {
    if loss.numel() != 1 {
        return Err(Error::shape(
            "backward",
            format!("loss has shape {:?}; reduce it to one element (e.g. .mean()) or call backward_with", loss.shape()),
        ));
    }
    let one = Tensor::full(loss.arena(), loss.shape(), 1.0, loss.dtype(), Tag::Temporary)?;
    backward_with(loss, one)
}

/// Back-propagate from `output` with the given gradient. Consumes the tape.
pub fn backward_with(output: &Tensor, grad: Tensor) -> Result<()> {
    if grad.shape() != output.shape() || grad.dtype() != output.dtype() {
        return Err(Error::shape(
            "backward",
            format!("gradient {:?} {} for output {:?} {}", grad.shape(), grad.dtype(), output.shape(), output.dtype()),
        ));
    }
    if !output.requires_grad_flag() {
        return Err(Error::invalid("backward", "the output does not depend on anything that requires grad"));
    }
    let mut nodes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let _no_grad = no_grad();
    let mut grads: HashMap<u64, Tensor> = HashMap::new();
    if output.is_leaf() {
        accumulate_leaf(output, grad)?;
        return Ok(());
    }
    grads.insert(output.id(), grad);
    while let Some(mut node) = nodes.pop() {
        let gout: Vec<Option<Tensor>> = node.outputs.iter().map(|id| grads.remove(id)).collect();
        if gout.iter().all(Option::is_none) {
            continue; // not on a path to the output; dropping frees what it saved
        }
        let backward = node.backward.take().expect("each node runs once");
        let gin = backward(&node.saved, &gout)?;
        drop(gout);
        let inputs = std::mem::take(&mut node.inputs);
        let shapes = std::mem::take(&mut node.input_shapes);
        let op = node.op;
        drop(node); // saved tensors go now, before the gradients pile up
        if gin.len() != inputs.len() {
            return Err(Error::invalid(
                op,
                format!("backward returned {} gradients for {} inputs", gin.len(), inputs.len()),
            ));
        }
        for ((target, g), shape) in inputs.into_iter().zip(gin).zip(shapes) {
            let (Some(target), Some(g)) = (target, g) else { continue };
            if g.shape() != shape.as_slice() {
                return Err(Error::invalid(
                    op,
                    format!("backward gave a gradient of shape {:?} for an input of shape {shape:?}", g.shape()),
                ));
            }
            match target {
                Target::Leaf(t) => accumulate_leaf(&t, g)?,
                Target::Output(id) => {
                    let g = match grads.remove(&id) {
                        Some(prev) => add_grads(prev, g)?,
                        None => g,
                    };
                    grads.insert(id, g);
                }
            }
        }
    }
    Ok(())
}

fn uniquely_owned(t: &Tensor) -> bool {
    t.is_exclusive() && t.is_contiguous() && t.numel() == t.storage().numel()
}

fn add_grads(a: Tensor, b: Tensor) -> Result<Tensor> {
    if uniquely_owned(&a) && a.dtype() == b.dtype() {
        crate::ops::add_into(&a, &b)?;
        Ok(a)
    } else {
        a.add(&b)
    }
}

/// Add `g` into a leaf's `.grad`, in place when one exists.
fn accumulate_leaf(leaf: &Tensor, g: Tensor) -> Result<()> {
    if g.dtype() != leaf.dtype() {
        return Err(Error::dtype("backward", format!("gradient is {} for a {} leaf", g.dtype(), leaf.dtype())));
    }
    match leaf.grad() {
        Some(acc) => crate::ops::add_into(&acc, &g),
        None => {
            let g = if uniquely_owned(&g) { g } else { crate::ops::copy(&g, Tag::Gradient)? };
            g.arena().retag(g.storage().block(), Tag::Gradient, "grad");
            leaf.set_grad(Some(g.detach()));
            Ok(())
        }
    }
}

/// Activation recompute: run `segment` keeping none of its activations.
///
/// The forward runs under `no_grad` and the tape records one node that saves
/// only `inputs`. Its backward re-runs `segment` on those inputs with the RNG
/// state it started from (so dropout draws the same masks), then
/// back-propagates through the rerun: parameters used inside accumulate into
/// `.grad` exactly as in a plain run, and the inputs' gradients flow on.
/// Costs one extra forward of the segment; saves all of its activations but
/// its inputs. `params` are the parameters the segment uses: they make the
/// node record even when no input needs a gradient.
///
/// ```
/// use headroom::{autograd::{backward, checkpoint}, rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let w = Tensor::full(&arena, &[64, 64], 0.01, DType::F32, Tag::Parameter).unwrap().requires_grad();
/// let x = Tensor::full(&arena, &[8, 64], 1.0, DType::F32, Tag::Data).unwrap().requires_grad();
/// let w2 = w.clone();
/// let y = checkpoint(&[&x], &[&w], &mut Rng::new(0), move |xs, _| xs[0].matmul(&w2)?.gelu()?.matmul(&w2)).unwrap();
/// // Only the input is kept for backward, not the two intermediate results.
/// assert_eq!(arena.stats().tag(Tag::Activation).allocated.current, 0);
/// backward(&y.sum_all().unwrap()).unwrap();
/// assert!(w.grad().is_some() && x.grad().is_some());
/// ```
pub fn checkpoint(
    inputs: &[&Tensor],
    params: &[&Tensor],
    rng: &mut Rng,
    segment: impl Fn(&[Tensor], &mut Rng) -> Result<Tensor> + 'static,
) -> Result<Tensor> {
    let start = rng.clone();
    let out = {
        let _g = no_grad();
        let xs: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        segment(&xs, rng)?
    };
    let saved = inputs.iter().map(|t| (*t).clone()).collect();
    let n_params = params.len();
    let all: Vec<&Tensor> = inputs.iter().chain(params).copied().collect();
    Ok(record("checkpoint", &all, out, saved, move |saved, g| {
        let g = g[0].clone().expect("gradient");
        let _g = enable_grad();
        let xs: Vec<Tensor> = saved
            .iter()
            .map(|t| if t.requires_grad_flag() { t.detach().requires_grad() } else { t.detach() })
            .collect();
        let mut rng = start;
        let out = segment(&xs, &mut rng)?;
        backward_with(&out, g)?;
        // The inputs' gradients flow on as intermediates, not as `.grad`.
        Ok(xs
            .iter()
            .map(|x| {
                let g = x.grad()?;
                x.set_grad(None);
                g.arena().retag(g.storage().block(), Tag::Temporary, "checkpoint");
                Some(g)
            })
            .chain((0..n_params).map(|_| None))
            .collect())
    }))
}
