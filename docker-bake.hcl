# The images of docs/deployment.md, built with `docker buildx bake` (BuildKit), tagged with the
# package version.
#
#   docker buildx bake                          # api + triton: polydub:0.1.0, polydub-triton:0.1.0
#   REGISTRY=registry.example.com/polydub docker buildx bake --push
#   docker buildx bake --print                  # what would be built, resolved
#   PRESET=large docker buildx bake triton-baked --set '*.secrets=id=hf_token,env=HF_TOKEN'
#
# VERSION defaults to polydub/version.py's __version__ (a unit test keeps them equal); CI passes it
# explicitly, e.g. VERSION=$(python -c 'from polydub.version import __version__; print(__version__)').
#
# "triton" carries no weights: the chart reads the model repository from S3 by default
# (triton.modelRepository: ""), so pushing this image redistributes no model. "triton-baked-cpu"
# and "triton-baked-gpu" export the checkpoints into the image (Dockerfile.triton, MODELS=export):
# pushing them REDISTRIBUTES THE WEIGHTS under their licences (NLLB-200 and MMS-TTS are
# CC-BY-NC-4.0, non-commercial); keep them in a private registry unless those licences allow it.

variable "VERSION" {
  default = "0.1.0"
}

# Registry and namespace the tags start with (no trailing slash); empty = local names.
variable "REGISTRY" {
  default = ""
}

# Checkpoints the baked images export (polydub models export --preset).
variable "PRESET" {
  default = "small"
}

# The commit built, for the image label (CI: the commit SHA).
variable "REVISION" {
  default = ""
}

function "tag" {
  params = [name, version]
  result = notequal(REGISTRY, "") ? "${REGISTRY}/${name}:${version}" : "${name}:${version}"
}

group "default" {
  targets = ["api", "triton"]
}

target "_common" {
  context = "."
  labels = {
    "org.opencontainers.image.version"  = VERSION
    "org.opencontainers.image.revision" = REVISION
  }
}

# The API, the orchestrator workers and the migrations (one image).
target "api" {
  inherits   = ["_common"]
  dockerfile = "Dockerfile.api"
  tags       = [tag("polydub", VERSION)]
}

# An empty model repository: replaces Dockerfile.triton's "models" stage (a named context takes
# precedence over a stage of the same name), so the image's /models is empty.
target "models-none" {
  dockerfile-inline = "FROM scratch\nWORKDIR /src/model_repository\n"
}

# Triton with polydub's python dependencies and no models (CPU and GPU alike: the chart selects
# the profile with --model-config-name). The default, with the chart's S3 model repository.
target "triton" {
  inherits   = ["_common"]
  dockerfile = "Dockerfile.triton"
  contexts = {
    models = "target:models-none"
  }
  labels = {
    "org.opencontainers.image.description" = "Triton Inference Server with polydub's python backends and no models (read from the S3 model repository)"
  }
  tags = [tag("polydub-triton", VERSION)]
}

# Triton with the exported weights baked in (/models), one image per export target. Needs the
# Hugging Face Hub at build time; a gated checkpoint reads the hf_token secret.
target "triton-baked" {
  name       = "triton-baked-${variant}"
  matrix     = { variant = ["cpu", "gpu"] }
  inherits   = ["_common"]
  dockerfile = "Dockerfile.triton"
  args = {
    MODELS = "export"
    TARGET = variant
    PRESET = PRESET
  }
  labels = {
    "org.opencontainers.image.description" = "Triton with polydub's models baked in: NLLB-200 and MMS-TTS weights are CC-BY-NC-4.0"
  }
  tags = [tag("polydub-triton", "${VERSION}-${PRESET}-${variant}")]
}
