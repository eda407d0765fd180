"""The VITS inference graph with the speaking rate, the noise scales and the noise as inputs.

Hugging Face's ``VitsModel.forward`` reads ``speaking_rate``, ``noise_scale`` and
``noise_scale_duration`` from attributes (frozen into a traced graph as constants) and draws its
noise with ``torch.randn`` (frozen too, or non-deterministic). ``VitsSynthesizer`` runs the same
submodules with those four things as per-row tensor inputs, so one ONNX graph serves every rate
and every request of a batch can carry its own rate and seed.

The noise comes from a counter-based generator (``gaussian_noise``): a standard normal value is a
pure function of (seed, stream, channel, position). So the same seed gives the same speech in
PyTorch and in ONNX, on its own or inside a padded batch (the noise of a row never depends on the
batch's padded lengths), and a re-synthesis at another rate keeps the same predicted durations
before scaling, which is what lets the client solve for the rate that fits a time slot.

The generator uses int64 products below 2**62 and ``remainder`` (ONNX Mod, fmod=0: integer arithmetic; fmod=1 goes through double in onnxruntime and loses bits) by the Mersenne prime 2**31 - 1 (exact
in every runtime), a quintic permutation for non-linearity, then Box-Muller in float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from polydub.export.spec import GraphSpec, TensorSpec
from polydub.serving import names
from polydub.serving.names import MmsTtsIn, MmsTtsOut

MODULUS = 2_147_483_647  # 2**31 - 1, prime; every intermediate product stays below 2**62
MULTIPLIER = 48_271  # MINSTD multiplier
STREAM_DURATION = 1  # noise of the stochastic duration predictor, [B, 2, T]
STREAM_PRIOR = 2  # noise of the prior latents, [B, flow_size, frames]
INPUT_NAMES = tuple(MmsTtsIn)
OUTPUT_NAMES = tuple(MmsTtsOut)
FP32_ATOL = 1e-3  # waveform / durations vs PyTorch (observed ~1e-4 on values of order 1-10)
INT8_ATOL = 5e-2


def _permute(x: torch.Tensor) -> torch.Tensor:
    """A bijection of [0, MODULUS): multiply, then the 5th power (gcd(5, MODULUS - 1) = 1)."""
    x = torch.remainder(x * MULTIPLIER, MODULUS)
    x2 = torch.remainder(x * x, MODULUS)
    x4 = torch.remainder(x2 * x2, MODULUS)
    return torch.remainder(x4 * x, MODULUS)


def _absorb(h: torch.Tensor, part: torch.Tensor | int) -> torch.Tensor:
    return _permute(torch.remainder(h + part + 1, MODULUS))


def gaussian_noise(seed: torch.Tensor, stream: int, channels: int, length: Any) -> torch.Tensor:
    """Standard normal noise [B, channels, length] as a pure function of (seed, stream, c, t).

    ``seed``: [B, 1] int64 (any non-negative value). ``length`` may be a traced scalar tensor.
    """
    h = _absorb(torch.remainder(seed.reshape(-1, 1, 1), MODULUS), stream)
    channel = torch.arange(channels, dtype=torch.int64).reshape(1, -1, 1)
    position = torch.arange(length, dtype=torch.int64).reshape(1, 1, -1)
    h = _absorb(_absorb(h, channel), position)
    # Two uniforms in (0, 1]; the lower bound 2**-31 keeps log finite.
    u1 = (_absorb(h, 1) + 1).to(torch.float32) / float(MODULUS + 1)
    u2 = (_absorb(h, 2) + 1).to(torch.float32) / float(MODULUS + 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


class VitsSynthesizer(nn.Module):
    """input_ids, attention_mask [B, T] int64; length_scale, noise_scale, noise_scale_duration
    [B, 1] float32; seed [B, 1] int64 -> waveform [B, S] float32, waveform_lengths [B, 1] int64,
    durations [B, T] float32 (frames per token at length_scale 1, before rounding up).

    Rows are independent: padding a row's tokens (attention_mask 0) leaves its speech unchanged,
    and the samples past ``waveform_lengths`` are padding to cut.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        config = model.config
        if config.num_speakers > 1:
            raise ValueError("multi-speaker VITS checkpoints are not supported (MMS-TTS is not)")
        self.text_encoder = model.text_encoder
        self.duration_predictor = model.duration_predictor
        self.flow = model.flow
        self.decoder = model.decoder
        self.stochastic = bool(config.use_stochastic_duration_prediction)
        self.flow_size = int(config.flow_size)
        self.hop_length = int(math.prod(config.upsample_rates))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        length_scale: torch.Tensor,
        noise_scale: torch.Tensor,
        noise_scale_duration: torch.Tensor,
        seed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = self.text_encoder.embed_tokens.weight.dtype
        input_mask = attention_mask.unsqueeze(-1).to(dtype)  # [B, T, 1]
        hidden, prior_means, prior_log_variances = self.text_encoder(
            input_ids=input_ids,
            padding_mask=input_mask,
            attention_mask=attention_mask,
            return_dict=False,
        )[:3]
        hidden = hidden.transpose(1, 2)
        input_mask = input_mask.transpose(1, 2)  # [B, 1, T]

        log_duration = self._log_duration(hidden, input_mask, noise_scale_duration, seed)
        durations = torch.exp(log_duration) * input_mask  # [B, 1, T]
        frames = torch.ceil(durations * length_scale.unsqueeze(-1))
        predicted_lengths = torch.clamp_min(torch.sum(frames, [1, 2]), 1).long()

        # Hard monotonic alignment from the integer durations, as VitsModel.forward builds it.
        output_length: Any = predicted_lengths.max()  # a traced scalar: the graph stays dynamic
        indices = torch.arange(output_length, dtype=predicted_lengths.dtype)
        output_mask = (indices.unsqueeze(0) < predicted_lengths.unsqueeze(1)).unsqueeze(1)
        output_mask = output_mask.to(dtype)  # [B, 1, F]
        attn_mask = torch.unsqueeze(input_mask, 2) * torch.unsqueeze(output_mask, -1)
        batch_size, _, out_len, in_len = attn_mask.shape
        cum = torch.cumsum(frames, -1).view(batch_size * in_len, 1)
        positions = torch.arange(out_len, dtype=frames.dtype)
        valid = (positions.unsqueeze(0) < cum).to(attn_mask.dtype).view(batch_size, in_len, out_len)
        starts = valid - nn.functional.pad(valid, [0, 0, 1, 0, 0, 0])[:, :-1]
        attn = starts.unsqueeze(1).transpose(2, 3) * attn_mask  # [B, 1, F, T]

        means = torch.matmul(attn.squeeze(1), prior_means).transpose(1, 2)  # [B, C, F]
        log_variances = torch.matmul(attn.squeeze(1), prior_log_variances).transpose(1, 2)
        noise = gaussian_noise(seed, STREAM_PRIOR, self.flow_size, output_length)
        scale = noise_scale.unsqueeze(-1)
        # Masked (HF leaves the noise past a row's end, which the flow's convolutions then see).
        latents = (means + noise.to(dtype) * torch.exp(log_variances) * scale) * output_mask
        latents = self.flow(latents, output_mask, None, reverse=True)
        waveform = self._decode(latents * output_mask, predicted_lengths, output_length)
        waveform_lengths = (predicted_lengths * self.hop_length).unsqueeze(1)
        return waveform, waveform_lengths, durations.squeeze(1)

    def _decode(
        self, spectrogram: torch.Tensor, lengths: torch.Tensor, frames: Any
    ) -> torch.Tensor:
        """VitsHifiGan.forward, with every convolution's input zeroed past the row's end.

        Alone, a row's convolutions see zero padding at its end; in a batch they would see the
        activations of the padded frames (biases, upsampling tails). Masking each stage at its
        own resolution makes a row's waveform the same alone or batched with longer rows."""
        dec = self.decoder
        slope = dec.config.leaky_relu_slope
        resolution = 1

        def mask_at(scale: int) -> torch.Tensor:
            positions = torch.arange(frames * scale, dtype=lengths.dtype).unsqueeze(0)
            return (positions < (lengths * scale).unsqueeze(1)).unsqueeze(1).to(spectrogram.dtype)

        mask = mask_at(resolution)
        hidden = dec.conv_pre(spectrogram) * mask
        for i, rate in enumerate(dec.config.upsample_rates):
            hidden = dec.upsampler[i](nn.functional.leaky_relu(hidden, slope))
            resolution *= int(rate)
            mask = mask_at(resolution)
            hidden = hidden * mask
            total = None
            for j in range(dec.num_kernels):
                out = _masked_resblock(dec.resblocks[i * dec.num_kernels + j], hidden, mask)
                total = out if total is None else total + out
            assert total is not None
            hidden = total / dec.num_kernels
        hidden = dec.conv_post(nn.functional.leaky_relu(hidden))
        return torch.tanh(hidden).squeeze(1)

    def _log_duration(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        noise_scale_duration: torch.Tensor,
        seed: torch.Tensor,
    ) -> torch.Tensor:
        dp = self.duration_predictor
        if not self.stochastic:
            result: torch.Tensor = dp(hidden, mask, None)
            return result
        # VitsStochasticDurationPredictor.forward(reverse=True) with the noise given.
        inputs = dp.conv_pre(hidden.detach())
        inputs = dp.conv_dds(inputs, mask)
        inputs = dp.conv_proj(inputs) * mask
        flows = list(reversed(dp.flows))
        flows = [*flows[:-2], flows[-1]]  # VITS drops a useless flow at inference
        noise = gaussian_noise(seed, STREAM_DURATION, 2, hidden.shape[2]).to(hidden.dtype)
        latents = noise * noise_scale_duration.unsqueeze(-1)
        for flow in flows:
            latents = torch.flip(latents, [1])
            latents, _ = flow(latents, mask, global_conditioning=inputs, reverse=True)
        return latents[:, :1, :]


def _masked_resblock(block: Any, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """HifiGanResidualBlock.forward with each convolution's output masked."""
    slope = block.leaky_relu_slope
    for conv1, conv2 in zip(block.convs1, block.convs2, strict=True):
        out = conv1(nn.functional.leaky_relu(hidden, slope)) * mask
        out = conv2(nn.functional.leaky_relu(out, slope)) * mask
        hidden = hidden + out
    return hidden


def fold_weight_norm(model: nn.Module) -> None:
    """Bake weight-norm parametrizations into plain weights (fewer ops in the exported graph)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def reference_noise(
    seed: torch.Tensor, input_length: int, flow_size: int, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise ``VitsSynthesizer`` draws, for feeding Hugging Face's own forward in checks."""
    return (
        gaussian_noise(seed, STREAM_DURATION, 2, input_length),
        gaussian_noise(seed, STREAM_PRIOR, flow_size, frames),
    )


def graph_spec(language: str) -> GraphSpec:
    batch, tokens, samples = "batch", "tokens", "samples"
    return GraphSpec(
        name=names.mms_tts(language),
        inputs=(
            TensorSpec(MmsTtsIn.INPUT_IDS, "int64", (batch, tokens)),
            TensorSpec(MmsTtsIn.ATTENTION_MASK, "int64", (batch, tokens)),
            TensorSpec(MmsTtsIn.LENGTH_SCALE, "float32", (batch, 1)),
            TensorSpec(MmsTtsIn.NOISE_SCALE, "float32", (batch, 1)),
            TensorSpec(MmsTtsIn.NOISE_SCALE_DURATION, "float32", (batch, 1)),
            TensorSpec(MmsTtsIn.SEED, "int64", (batch, 1)),
        ),
        outputs=(
            TensorSpec(MmsTtsOut.WAVEFORM, "float32", (batch, samples)),
            TensorSpec(MmsTtsOut.WAVEFORM_LENGTHS, "int64", (batch, 1)),
            TensorSpec(MmsTtsOut.DURATIONS, "float32", (batch, tokens)),
        ),
        opset=17,
        fp32_atol=FP32_ATOL,
        int8_atol=INT8_ATOL,
        quantize=False,  # no dynamic int8: the vocoder is quantized statically (mms_tts_int8)
    )
