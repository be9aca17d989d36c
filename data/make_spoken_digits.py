#!/usr/bin/env python3
"""Generate the spoken-digits dataset in data/spoken_digits/ with espeak-ng.

Synthesises the English words "zero".."nine" over many espeak-ng voices
(accent x voice variant), speeds and pitches, adds a random time shift and a
little white noise, and stores log-mel features as float16 .npy files.

The test split uses voice variants that never occur in the train split, so
test accuracy measures generalisation to unseen speakers.

Tooling only (CI never runs this); the outputs are committed. Needs:
    apt-get install espeak-ng      # tested with 1.51+dfsg-10+deb12u2 (Debian 12)
    pip install numpy
Run from the repo root:
    python3 data/make_spoken_digits.py
"""

import io
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

SEED = 20240601
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# espeak-ng's own (non-mbrola) English voices.
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
           "en-gb-x-gbcwmd", "en-029"]

# Voice variants (`espeak-ng --voices=variant`). Each variant changes formants,
# pitch range, breathiness etc., so it plays the role of the speaker.
# Left out: "fast" (a speed preset, not a speaker), "Mr serious" (space in name),
# and "klatt6"/"caleb", which synthesise exactly the same audio as "klatt" in
# espeak-ng 1.51 (would leak train speakers into test).
# Likewise "en-gb" is absent from ACCENTS because "en-gb+VARIANT" silently
# ignores the variant (use "en"), and "en-us-nyc" is identical to "en-us".
TEST_VARIANTS = ["m3", "m7", "f2", "f5", "klatt3", "whisperf", "Andy",
                 "Annie", "belinda", "david", "edward2", "iven3", "linda",
                 "robosoft4", "steph2", "Gene2", "norbert", "shelby", "zac"]
TRAIN_VARIANTS = [
    "m1", "m2", "m4", "m5", "m6", "m8", "f1", "f3", "f4", "klatt", "klatt2",
    "klatt4", "klatt5", "whisper", "croak", "grandma", "grandpa", "Alex",
    "Alicia", "Andrea", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky",
    "UniRobot", "adam", "anika", "anikaRobot", "announcer", "antonio", "aunty",
    "benjamin", "boris", "ed", "edward", "gustave", "iven", "iven2",
    "iven4", "john", "kaukovalta", "marcelo", "max", "michel", "miguel",
    "pablo", "paul", "pedro", "quincy", "rob", "robert", "robosoft",
    "robosoft2", "robosoft3", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "sandro", "steph", "steph3", "travis", "victor",
]
assert not set(TEST_VARIANTS) & set(TRAIN_VARIANTS)

TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 40

SPEEDS = (140, 230)   # words per minute, uniform; default is 175
PITCHES = (25, 75)    # espeak pitch 0..99, uniform; default is 50
SNR_DB = (15.0, 40.0)

# Features: espeak's native 22050 Hz, 25 ms Hann window, 20 ms hop (10 ms hop
# would need twice the frames to cover a word, doubling the file size).
SR = 22050
WIN = 551            # 25 ms
HOP = 441            # 20 ms
NFFT = 1024
N_MELS = 24
FMIN, FMAX = 50.0, 8000.0
N_FRAMES = 40        # 40 frames * 20 ms = 0.8 s window
CLIP_LEN = WIN + (N_FRAMES - 1) * HOP

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spoken_digits")


def synth(word, voice, speed, pitch, tmpdir):
    path = os.path.join(tmpdir, "w.wav")
    subprocess.run(["espeak-ng", "-w", path, "-v", voice, "-s", str(speed),
                    "-p", str(pitch), word], check=True, capture_output=True)
    with wave.open(path) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0


def check_voices(tmpdir):
    """espeak-ng silently ignores an unknown variant, so check every voice is distinct."""
    seen = {}
    for accent in ACCENTS:
        for v in [None] + TRAIN_VARIANTS + TEST_VARIANTS:
            voice = accent if v is None else f"{accent}+{v}"
            key = synth("seven", voice, 175, 50, tmpdir).tobytes()
            if key in seen:
                raise SystemExit(f"voices {seen[key]} and {voice} give identical audio")
            seen[key] = voice


def trim(x, rel_db=-40.0):
    """Cut leading/trailing silence: keep 10 ms blocks above -40 dB of the peak block."""
    blk = 220
    n = len(x) // blk
    if n == 0:
        return x
    e = (x[: n * blk].reshape(n, blk) ** 2).mean(axis=1)
    on = np.nonzero(e > e.max() * 10 ** (rel_db / 10))[0]
    return x[on[0] * blk:(on[-1] + 1) * blk]


def place(x, rng):
    """Put the word at a random offset in a fixed-length clip (random time shift)."""
    out = np.zeros(CLIP_LEN)
    if len(x) >= CLIP_LEN:
        # Too long (slow speech): keep the middle. Rare with SPEEDS above.
        s = (len(x) - CLIP_LEN) // 2
        return x[s:s + CLIP_LEN].copy(), True
    off = rng.integers(0, CLIP_LEN - len(x) + 1)
    out[off:off + len(x)] = x
    return out, False


def add_noise(x, rng):
    p_sig = np.mean(x ** 2)
    snr = rng.uniform(*SNR_DB)
    return x + rng.normal(0.0, np.sqrt(p_sig / 10 ** (snr / 10)), size=x.shape)


def mel_filterbank():
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = mel2hz(np.linspace(hz2mel(FMIN), hz2mel(FMAX), N_MELS + 2))
    freqs = np.arange(NFFT // 2 + 1) * SR / NFFT
    fb = np.zeros((N_MELS, len(freqs)))
    for m in range(N_MELS):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


FB = mel_filterbank()
HANN = np.hanning(WIN + 2)[1:-1]  # periodic-ish Hann without zero endpoints


def logmel(x):
    idx = np.arange(N_FRAMES)[:, None] * HOP + np.arange(WIN)[None, :]
    frames = x[idx] * HANN
    power = np.abs(np.fft.rfft(frames, n=NFFT, axis=1)) ** 2
    return np.log(power @ FB.T + 1e-10)  # [N_FRAMES, N_MELS]


def make_split(variants, per_class, rng, tmpdir):
    xs, ys, meta, n_cropped = [], [], [], 0
    for label, word in enumerate(WORDS):
        for _ in range(per_class):
            accent = ACCENTS[rng.integers(len(ACCENTS))]
            variant = variants[rng.integers(len(variants))]
            speed = int(rng.integers(SPEEDS[0], SPEEDS[1] + 1))
            pitch = int(rng.integers(PITCHES[0], PITCHES[1] + 1))
            voice = f"{accent}+{variant}"
            wav = trim(synth(word, voice, speed, pitch, tmpdir))
            clip, cropped = place(wav, rng)
            n_cropped += cropped
            xs.append(logmel(add_noise(clip, rng)))
            ys.append(label)
            meta.append((voice, speed, pitch))
    # Shuffle so the files are not sorted by class.
    order = rng.permutation(len(xs))
    return np.stack(xs)[order], np.array(ys, dtype=np.uint8)[order], n_cropped


def main():
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        check_voices(tmpdir)
        train_x, train_y, crop_tr = make_split(TRAIN_VARIANTS, TRAIN_PER_CLASS, rng, tmpdir)
        test_x, test_y, crop_te = make_split(TEST_VARIANTS, TEST_PER_CLASS, rng, tmpdir)
    print(f"cropped (word longer than {N_FRAMES} frames): train {crop_tr}, test {crop_te}")

    # Per-mel-band normalisation with train statistics only.
    mean = train_x.mean(axis=(0, 1))
    std = train_x.std(axis=(0, 1))
    train_x = ((train_x - mean) / std).astype(np.float16)
    test_x = ((test_x - mean) / std).astype(np.float16)

    for name, arr in [("train_x", train_x), ("train_y", train_y),
                      ("test_x", test_x), ("test_y", test_y)]:
        np.save(os.path.join(OUT_DIR, name + ".npy"), np.ascontiguousarray(arr))
        print(name, arr.shape, arr.dtype)
    np.set_printoptions(precision=4, suppress=True)
    print("band mean:", mean)
    print("band std:", std)
    print("test mean/std after norm:", float(test_x.astype(np.float32).mean()),
          float(test_x.astype(np.float32).std()))


if __name__ == "__main__":
    sys.exit(main())
