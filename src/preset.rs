//! Presets: the default spoken-digits model and the five set-ups that ran
//! out of memory for the people headroom serves, each with a `-tiny`
//! configuration small enough to train in the test suite.

use crate::alloc::{Arena, ArenaConfig, Backing};
use crate::error::{Error, Result};
use crate::model::{AsrConfig, ClassifierConfig, EegConfig, LipreadConfig, Model, ModelConfig, TtsConfig, VqaeConfig};
use crate::rng::Rng;
use serde::Serialize;

/// A named model with its data and the training settings it starts from.
#[derive(Clone, Debug, Serialize)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    /// How this set-up failed elsewhere.
    pub failure: &'static str,
    pub model: ModelConfig,
    /// Default micro-batch.
    pub batch: usize,
    pub lr: f32,
    /// Samples of the synthetic task (unused by `digits`, which is embedded).
    pub train_samples: usize,
    pub test_samples: usize,
}

/// Shape of the embedded spoken-digits clips (checked when they load).
pub const DIGITS_FRAMES: usize = 40;
pub const DIGITS_FEATURES: usize = 24;

impl ClassifierConfig {
    /// The digits classifier at width `dim` with `layers` blocks of MLP width `hidden`.
    pub fn digits(dim: usize, layers: usize, hidden: usize) -> ClassifierConfig {
        ClassifierConfig {
            frames: DIGITS_FRAMES,
            features: DIGITS_FEATURES,
            classes: 10,
            dim,
            layers,
            heads: 4,
            hidden,
            dropout: 0.1,
        }
    }
}

impl ModelConfig {
    /// The digits classifier (see [`ClassifierConfig::digits`]).
    pub fn digits(dim: usize, layers: usize, hidden: usize) -> ModelConfig {
        ModelConfig::Digits(ClassifierConfig::digits(dim, layers, hidden))
    }
}

fn asr(dim: usize, encoder_layers: usize, decoder_layers: usize) -> ModelConfig {
    ModelConfig::Asr(AsrConfig {
        mels: 80,
        frames: 1000,
        dim,
        encoder_layers,
        decoder_layers,
        heads: 4,
        ffn: 4 * dim,
        vocab: 256,
        target_len: 100,
        dropout: 0.1,
    })
}

/// Every preset, in the order `headroom presets` lists them.
pub fn presets() -> Vec<Preset> {
    let full = |name, about, failure, model, batch, lr| Preset {
        name,
        about,
        failure,
        model,
        batch,
        lr,
        train_samples: 512,
        test_samples: 64,
    };
    let tiny = |name, about, model, batch| Preset {
        name,
        about,
        failure: "",
        model,
        batch,
        lr: 3e-3,
        train_samples: 256,
        test_samples: 32,
    };
    vec![
        Preset {
            name: "digits",
            about: "2-block transformer classifying spoken digits (embedded espeak-ng log-mels, CC0)",
            failure: "",
            model: ModelConfig::digits(64, 2, 128),
            batch: 32,
            lr: 2e-3,
            train_samples: 0,
            test_samples: 0,
        },
        full(
            "lipread",
            "LipNet-like: 4 Conv3d stages (32, 64, 96, 96), 2-layer BiLSTM 256, additive attention, CTC over 28 characters; clips 3×75×64×64",
            "CPU: \"tried to allocate 7962624000 bytes\" at batch 4",
            ModelConfig::Lipread(LipreadConfig {
                frames: 75,
                size: 64,
                channels: vec![32, 64, 96, 96],
                lstm_layers: 2,
                hidden: 256,
                bidirectional: true,
                attention: Some(256),
                chars: 28,
            }),
            4,
            1e-3,
        ),
        full(
            "lipread-lite",
            "lightweight lip reading: 3 Conv3d stages, 1-layer LSTM 128, no attention, CTC",
            "the fallback people tried after the OOM",
            ModelConfig::Lipread(LipreadConfig {
                frames: 75,
                size: 64,
                channels: vec![32, 64, 96],
                lstm_layers: 1,
                hidden: 128,
                bidirectional: false,
                attention: None,
                chars: 28,
            }),
            4,
            1e-3,
        ),
        full(
            "asr",
            "Konkani ASR: 80-mel × 1000 frames, conv ×4 subsampling, transformer 12+6 layers, d 256, 4 heads, FFN 1024, vocab 256, targets of 100",
            "CUDA OOM on a 14.7 GiB T4 at batch 8",
            asr(256, 12, 6),
            8,
            5e-4,
        ),
        full("asr-192", "the asr model at d 192, 8+4 layers", "", asr(192, 8, 4), 8, 5e-4),
        full("asr-128", "the asr model at d 128, 6+3 layers", "", asr(128, 6, 3), 8, 5e-4),
        full(
            "eeg",
            "EEG to text: 105 channels × 5500 steps, 2-layer BiLSTM encoder 256, LSTM decoder 512 with Bahdanau attention, 95 words, targets of 10",
            "51 GB of RAM: the whole data set in memory plus activations",
            ModelConfig::Eeg(EegConfig {
                channels: 105,
                steps: 5500,
                encoder_layers: 2,
                encoder_hidden: 256,
                bidirectional: true,
                decoder_hidden: 512,
                embedding: 64,
                attention: 128,
                vocab: 95,
                target_len: 10,
            }),
            16,
            1e-3,
        ),
        full(
            "tts",
            "XTTS-like text to mel: 256 symbols × 200, 80-mel × 800 frames, transformer 6+6 layers, d 512, 8 heads, FFN 2048, L1 loss",
            "TensorFlow OOM allocating 13.4 GB",
            ModelConfig::Tts(TtsConfig {
                vocab: 256,
                text_len: 200,
                mels: 80,
                frames: 800,
                dim: 512,
                encoder_layers: 6,
                decoder_layers: 6,
                heads: 8,
                ffn: 2048,
                dropout: 0.1,
            }),
            16,
            3e-4,
        ),
        full(
            "vqae",
            "spectrogram-patch VQ autoencoder: 1×64×64 → 32×32×32 → 64×16×16 → 96×8×8 → 64×8×8, 512 codes, mirrored decoder; batch × 16 patches",
            "\"needs ≥ 6–8 GiB GPU\" at batch 8–16 × 16 patches",
            ModelConfig::Vqae(VqaeConfig {
                patch: 64,
                patches: 16,
                channels: vec![32, 64, 96],
                latent: 64,
                codes: 512,
                beta: 0.25,
            }),
            16,
            1e-3,
        ),
        tiny(
            "lipread-tiny",
            "lipread at 3×12×16×16: 2 Conv3d stages (4, 8), BiLSTM 16, attention 16, 8 characters",
            ModelConfig::Lipread(LipreadConfig {
                frames: 12,
                size: 16,
                channels: vec![4, 8],
                lstm_layers: 1,
                hidden: 16,
                bidirectional: true,
                attention: Some(16),
                chars: 8,
            }),
            4,
        ),
        tiny(
            "asr-tiny",
            "asr at 16 mels × 48 frames, d 32, 2+1 layers, vocab 16, targets of 6",
            ModelConfig::Asr(AsrConfig {
                mels: 16,
                frames: 48,
                dim: 32,
                encoder_layers: 2,
                decoder_layers: 1,
                heads: 2,
                ffn: 64,
                vocab: 16,
                target_len: 6,
                dropout: 0.0,
            }),
            4,
        ),
        tiny(
            "eeg-tiny",
            "eeg at 8 channels × 64 steps, BiLSTM 16, decoder 32, 12 words, targets of 4",
            ModelConfig::Eeg(EegConfig {
                channels: 8,
                steps: 64,
                encoder_layers: 1,
                encoder_hidden: 16,
                bidirectional: true,
                decoder_hidden: 32,
                embedding: 8,
                attention: 16,
                vocab: 12,
                target_len: 4,
            }),
            4,
        ),
        tiny(
            "tts-tiny",
            "tts at 16 symbols × 8, 8 mels × 16 frames, d 32, 1+1 layers",
            ModelConfig::Tts(TtsConfig {
                vocab: 16,
                text_len: 8,
                mels: 8,
                frames: 16,
                dim: 32,
                encoder_layers: 1,
                decoder_layers: 1,
                heads: 2,
                ffn: 64,
                dropout: 0.0,
            }),
            4,
        ),
        tiny(
            "vqae-tiny",
            "vqae at 1×16×16 patches, 2 per sample, stages (4, 8), latent 8, 16 codes",
            ModelConfig::Vqae(VqaeConfig { patch: 16, patches: 2, channels: vec![4, 8], latent: 8, codes: 16, beta: 0.25 }),
            4,
        ),
    ]
}

/// The preset called `name`, or an error listing them all.
pub fn get(name: &str) -> Result<Preset> {
    presets().into_iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
        Error::invalid("preset", format!("unknown preset `{name}`; available: {}", names.join(", ")))
    })
}

/// Parameters of a model, counted by building it on the meta device (no memory).
pub fn parameter_count(model: &ModelConfig) -> Result<usize> {
    let arena = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() })
        .map_err(|e| Error::invalid("preset", e.to_string()))?;
    Ok(Model::new(&arena, model, &mut Rng::new(0))?.parameter_count())
}
