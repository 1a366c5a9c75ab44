"""Generic diffusers -> original (LDM/SGM) key layout for UNet2DConditionModel, AutoencoderKL, CLIP text encoders.
The inverse of diffusers.loaders.single_file_utils.convert_ldm_*; written for test fixtures."""

import torch

RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest):
    for a, b in RESNET:
        if rest.startswith(a + "."):
            return b + rest[len(a) :]
    raise KeyError(rest)


def unet_to_ldm(sd, config):
    n = config["layers_per_block"] + 1
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        mod, param = ".".join(p[:-1]), p[-1]
        if mod in UNET_TOP:
            new = f"{UNET_TOP[mod]}.{param}"
        elif p[0] == "down_blocks":
            b, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                new = f"input_blocks.{1 + b * n + j}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + b * n + j}.1.{rest}"
            else:  # downsamplers.0.conv.*
                new = f"input_blocks.{(b + 1) * n}.0.op.{'.'.join(p[5:])}"
        elif p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            new = f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif p[0] == "up_blocks":
            b, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                new = f"output_blocks.{b * n + j}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{b * n + j}.1.{rest}"
            else:  # upsamplers.0.conv.*
                has_attn = "CrossAttn" in config["up_block_types"][b]
                new = f"output_blocks.{b * n + n - 1}.{2 if has_attn else 1}.{'.'.join(p[4:])}"
        else:
            raise KeyError(k)
        out["model.diffusion_model." + new] = v
    return out


VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_to_ldm(sd, config):
    nb = len(config["up_block_types"])
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        side = p[0]
        if p[1] == "down_blocks":
            i, rest = int(p[2]), p[3:]
            if rest[0] == "resnets":
                new = f"{side}.down.{i}.block.{rest[1]}." + ".".join(rest[2:])
            else:
                new = f"{side}.down.{i}.downsample." + ".".join(rest[2:])
        elif p[1] == "up_blocks":
            i, rest = int(p[2]), p[3:]
            if rest[0] == "resnets":
                new = f"{side}.up.{nb - 1 - i}.block.{rest[1]}." + ".".join(rest[2:])
            else:
                new = f"{side}.up.{nb - 1 - i}.upsample." + ".".join(rest[2:])
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                new = f"{side}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
            else:
                rest = ".".join(p[4:])
                for a, b in VAE_ATTN:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                new = f"{side}.mid.attn_1.{rest}"
                if v.ndim == 2:
                    v = v[:, :, None, None]  # original stores these as 1x1 convs
        elif p[1] == "conv_norm_out":
            new = f"{side}.norm_out.{p[2]}"
        else:
            new = k
        new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = v
    return out


def clip_to_ldm(sd, prefix):
    """OpenAI CLIP (transformers layout) under `prefix`.

    SD1.5 uses `cond_stage_model.transformer.`, SDXL `conditioner.embedders.0.transformer.`.
    """
    return {
        prefix + (k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
        for k, v in sd.items()
    }


def open_clip_to_ldm(sd, prefix="conditioner.embedders.1.model."):
    """CLIPTextModelWithProjection -> OpenCLIP layout (fused in_proj, transposed text_projection)."""
    out, qkv = {}, {}
    for k, v in sd.items():
        k = k.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T
        elif k.startswith("encoder.layers."):
            p = k.split(".")
            i, rest = p[2], ".".join(p[3:])
            base = f"transformer.resblocks.{i}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault((base, p[-1]), {})[rest.split(".")[1]] = v
                continue
            rest = (
                rest.replace("self_attn.", "attn.")
                .replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
            )
            out[base + rest] = v
        else:
            raise KeyError(k)
    for (base, param), d in qkv.items():
        out[f"{base}attn.in_proj_{param}"] = torch.cat([d["q_proj"], d["k_proj"], d["v_proj"]])
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_ldm(pipe, kind):
    sd = {}
    sd.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    if kind == "sd15":
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    else:
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict()))
    return sd
