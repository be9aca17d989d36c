//! Every op over tensors with a zero-length dimension returns a result or an
//! error, forward and backward; none panics (empty input is user input).

use headroom::autograd::backward;
use headroom::{Arena, DType, Result, Tag, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

type Op = fn(&Arena, &[usize]) -> Result<Tensor>;

fn z(a: &Arena, shape: &[usize]) -> Tensor {
    Tensor::zeros(a, shape, DType::F32, Tag::Data).unwrap().requires_grad()
}

fn ids(a: &Arena, n: usize) -> Tensor {
    Tensor::zeros(a, &[n], DType::I32, Tag::Data).unwrap()
}

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("add", |a, s| z(a, s).add(&z(a, s))),
        ("mul_bcast", |a, s| z(a, s).mul(&z(a, &s[s.len() - 1..]))),
        ("gelu", |a, s| z(a, s).gelu()),
        ("exp", |a, s| z(a, s).exp()),
        ("sum", |a, s| z(a, s).sum(&[-1], false)),
        ("sum_all", |a, s| z(a, s).sum_all()),
        ("mean0", |a, s| z(a, s).mean(&[0], true)),
        ("softmax0", |a, s| z(a, s).softmax(0)),
        ("log_softmax", |a, s| z(a, s).log_softmax(-1)),
        ("max0", |a, s| z(a, s).max(0, false)),
        ("layer_norm", |a, s| z(a, s).layer_norm(None, None, 1e-5)),
        ("transpose_copy", |a, s| z(a, s).transpose(0, -1)?.contiguous()),
        ("reshape", |a, s| z(a, s).reshape(&[0, 7])),
        ("slice", |a, s| z(a, s).slice(0, 0, 0)),
        ("matmul", |a, s| z(a, s).matmul(&z(a, &[s[s.len() - 1], 3]))),
        ("matmul_k0", |a, s| z(a, &[s[0], 0]).matmul(&z(a, &[0, 3]))),
        ("concat", |a, s| Tensor::concat(&[&z(a, s), &z(a, s)], 0)),
        ("split", |a, s| Ok(z(a, s).split(&[0, s[0]], 0)?.remove(1))),
        ("index_select", |a, s| z(a, s).index_select(0, &ids(a, 0))),
        ("masked_fill", |a, s| z(a, s).masked_fill(&Tensor::zeros(a, s, DType::U8, Tag::Data)?, 1.0)),
        ("embedding", |a, s| z(a, &[4, s[s.len() - 1]]).embedding(&ids(a, 0))),
        ("embedding_d0", |a, _| z(a, &[4, 0]).embedding(&ids(a, 3))),
        ("cross_entropy", |a, s| z(a, &[0, s[s.len() - 1].max(1)]).cross_entropy(&ids(a, 0), None, 0.0)),
        ("mse_loss", |a, s| z(a, s).mse_loss(&z(a, s))),
        ("dropout", |a, s| z(a, s).dropout(0.5, &mut headroom::rng::Rng::new(1))),
        ("to_bf16", |a, s| z(a, s).to_dtype(DType::BF16)?.to_dtype(DType::F32)),
        ("unbind", |a, s| {
            let parts = z(a, s).unbind(-1)?;
            parts.into_iter().next().map_or_else(|| z(a, s).sum_all(), Ok)
        }),
        ("attention_t0", |a, _| {
            let q = z(a, &[1, 1, 0, 4]);
            headroom::ops::attention(&q, &z(a, &[1, 1, 3, 4]), &z(a, &[1, 1, 3, 4]), &Default::default())
        }),
        ("attention_k0", |a, _| {
            let q = z(a, &[1, 1, 3, 4]);
            headroom::ops::attention(&q, &z(a, &[1, 1, 0, 4]), &z(a, &[1, 1, 0, 4]), &Default::default())
        }),
        ("attention_b0", |a, _| {
            let q = z(a, &[0, 2, 3, 4]);
            headroom::ops::attention(&q, &z(a, &[0, 2, 3, 4]), &z(a, &[0, 2, 3, 4]), &Default::default())
        }),
        ("conv1d_b0", |a, _| z(a, &[0, 2, 8]).conv1d(&z(a, &[3, 2, 3]), None, 1, 1, 1)),
        ("conv2d_c0", |a, _| z(a, &[2, 0, 5, 5]).conv2d(&z(a, &[3, 0, 3, 3]), None, [1, 1], [1, 1], [1, 1])),
        ("conv2d_o0", |a, _| z(a, &[2, 2, 5, 5]).conv2d(&z(a, &[0, 2, 3, 3]), None, [1, 1], [1, 1], [1, 1])),
        ("max_pool_b0", |a, _| z(a, &[0, 2, 8]).max_pool(&[2], &[2], &[0])),
        ("avg_pool_c0", |a, _| z(a, &[2, 0, 8]).avg_pool(&[2], &[2], &[0])),
        ("batch_norm_b0", |a, _| z(a, &[0, 3, 4]).batch_norm(None, None, None, None, true, 0.1, 1e-5)),
        ("batch_norm_sp0", |a, _| z(a, &[2, 3, 0]).batch_norm(None, None, None, None, true, 0.1, 1e-5)),
        ("vector_quantize_n0", |a, _| Ok(z(a, &[0, 4]).vector_quantize(&z(a, &[5, 4]))?.z_q)),
        ("lstm_b0", |a, _| {
            let p = headroom::ops::LstmParams { w_ih: z(a, &[8, 3]), w_hh: z(a, &[8, 2]), b_ih: None, b_hh: None };
            Ok(z(a, &[0, 4, 3]).lstm(&p, false, None)?.0)
        }),
    ]
}

#[test]
fn no_op_panics_on_zero_length_dimensions() {
    let shapes: [&[usize]; 4] = [&[0, 5], &[3, 0], &[0, 0], &[2, 0, 3]];
    let mut panics = Vec::new();
    for (name, op) in ops() {
        for shape in shapes {
            let a = Arena::host();
            let r = catch_unwind(AssertUnwindSafe(|| {
                if let Ok(y) = op(&a, shape) {
                    if y.requires_grad_flag() {
                        let _ = y.sum_all().and_then(|l| backward(&l));
                    }
                }
                headroom::autograd::clear_tape();
            }));
            if r.is_err() {
                panics.push(format!("{name} {shape:?}"));
            }
        }
    }
    assert!(panics.is_empty(), "these panicked: {panics:#?}");
}
