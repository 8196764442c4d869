//! Reading Hugging Face safetensors checkpoints (single file or sharded with an index),
//! with f32, f16, bf16 and f64 weights converted to f32.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
pub use safetensors::tensor::Dtype;
use safetensors::tensor::{SafeTensors, TensorInfo};

use crate::error::{ModelError, Result};

/// File name of a single-file checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    infos: HashMap<String, TensorInfo>,
}

/// A memory-mapped checkpoint: every tensor of every shard, by name.
pub struct Checkpoint {
    shards: Vec<Shard>,
    by_name: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or every shard listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            read_index(&index)?.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(ModelError::NoWeights { dir: dir.to_path_buf() });
        };
        Self::from_files(&files)
    }

    /// Opens a list of safetensors files as one checkpoint.
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut by_name = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let shard = open_shard(path)?;
            for name in shard.infos.keys() {
                by_name.insert(name.clone(), i);
            }
            shards.push(shard);
        }
        Ok(Self { shards, by_name })
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().cloned().collect();
        v.sort();
        v
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let shard = &self.shards[*self.by_name.get(name)?];
        Some(&shard.infos[name].shape)
    }

    /// The file holding a tensor, or the first file when it is absent (for error messages).
    pub fn path_of(&self, name: &str) -> &Path {
        let i = self.by_name.get(name).copied().unwrap_or(0);
        &self.shards[i].path
    }

    /// Reads a tensor as f32, checking that its shape is `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let Some(&i) = self.by_name.get(name) else {
            return Err(ModelError::MissingTensor { path: self.path_of(name).to_path_buf(), name: name.to_string() });
        };
        let shard = &self.shards[i];
        let info = &shard.infos[name];
        if info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
        let values = decode_f32(bytes, info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
            path: shard.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { path: shard.path.clone(), name: name.to_string(), index: at, value: values[at] });
        }
        Ok(values)
    }
}

impl Checkpoint {
    /// The stored dtype, shape and bytes of a tensor.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let shard = &self.shards[*self.by_name.get(name)?];
        let info = &shard.infos[name];
        let (a, b) = info.data_offsets;
        Some((info.dtype, &info.shape, &shard.map[shard.data_start + a..shard.data_start + b]))
    }
}

/// One tensor to write: name, dtype, shape and little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Encodes f32 values in a stored dtype (f32, f16, bf16 or f64).
pub fn encode_f32(values: &[f32], dtype: Dtype) -> Option<Vec<u8>> {
    Some(match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::F64 => values.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
        _ => return None,
    })
}

/// Writes a safetensors file atomically: to a temporary file beside `path`, then renamed, so a
/// failure never leaves a half-written file.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: format!("tensor `{name}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Bytes of the `*.safetensors` files in a checkpoint directory (0 when it cannot be read).
pub fn weights_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes bytes to `path` atomically (see [`secateur_runs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(secateur_runs::write_atomic(path, bytes)?)
}

fn read_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index.to_path_buf(), source })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::config(index, "weight_map", "missing or not an object"))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::config(index, &format!("weight_map.{tensor}"), "not a file name"))?;
        if file.contains('/') || file.contains("..") {
            return Err(ModelError::config(
                index,
                &format!("weight_map.{tensor}"),
                format!("shard {file:?} is not a file in the checkpoint directory"),
            ));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(ModelError::config(index, "weight_map", "lists no tensors"));
    }
    files.sort();
    Ok(files)
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the checkpoint is read-only for the life of the map; secateur never writes to a
    // file it has mapped (outputs go to a temporary file that is then renamed).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    // A header that runs past the end of the file is a truncated file, whatever the parser says.
    let announced = map.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if announced.is_none_or(|n| n.saturating_add(8) > map.len() as u64) {
        return Err(ModelError::Safetensors {
            path: path.to_path_buf(),
            reason: format!("file is truncated ({} bytes; its header does not fit)", map.len()),
        });
    }
    let (header, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let data_start = 8 + header;
    if data_start + metadata.data_len() > map.len() {
        return Err(ModelError::Safetensors {
            path: path.to_path_buf(),
            reason: format!(
                "file is truncated: {} bytes of tensor data announced, {} present",
                metadata.data_len(),
                map.len().saturating_sub(data_start)
            ),
        });
    }
    let infos = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
    Ok(Shard { path: path.to_path_buf(), map, data_start, infos })
}

fn decode_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        _ => return None,
    })
}

/// Files copied unchanged from a source checkpoint by [`save_like`] when present.
pub const COPIED_FILES: &[&str] =
    &["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// Saves a dense model as a Hugging Face checkpoint in `out`, laid out like its source `src`:
/// every tensor of `src` is kept (in its stored dtype), with the projection weights and biases
/// replaced by the model's; config and tokenizer files are copied. Written atomically, as one
/// `model.safetensors`.
pub fn save_like<B: burn::prelude::Backend>(model: &crate::DenseLm<B>, src: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let ckpt = Checkpoint::open(src)?;
    let spec = model.spec();
    let mut replaced: HashMap<String, Vec<f32>> = HashMap::new();
    for (site, proj) in model.projections() {
        let module = spec.hf_module(site.layer, site.kind);
        let read = |t: burn::prelude::Tensor<B, 2>| -> Vec<f32> { t.into_data().convert::<f32>().to_vec().expect("f32") };
        replaced.insert(format!("{module}.weight"), read(proj.weight.val()));
        if let Some(b) = &proj.bias {
            replaced.insert(format!("{module}.bias"), read(b.val().unsqueeze::<2>()));
        }
    }
    let mut tensors: Vec<RawTensor> = Vec::new();
    for name in ckpt.names() {
        let (dtype, shape, bytes) = ckpt.raw(&name).expect("listed tensor");
        let bytes = match replaced.get(&name) {
            Some(values) => encode_f32(values, dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                path: ckpt.path_of(&name).to_path_buf(),
                name: name.clone(),
                dtype: format!("{dtype:?}"),
            })?,
            None => bytes.to_vec(),
        };
        tensors.push((name, dtype, shape.to_vec(), bytes));
    }
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    write_safetensors(&out.join(WEIGHTS_FILE), &tensors, meta)?;
    for f in COPIED_FILES {
        let from = src.join(f);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| ModelError::io(&from, e))?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// Saves a dense model as a new Hugging Face checkpoint: `config.json` (as given) and
/// `model.safetensors` (f32, transformers' tensor names). Written atomically.
pub fn save_new<B: burn::prelude::Backend>(model: &crate::DenseLm<B>, config: &serde_json::Value, out: &Path) -> Result<()> {
    use burn::prelude::Tensor;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let spec = model.spec();
    let names = spec.weight_names();
    let mut tensors: Vec<RawTensor> = Vec::new();
    fn raw<B: burn::prelude::Backend, const D: usize>(name: String, t: Tensor<B, D>) -> RawTensor {
        let shape = t.dims().to_vec();
        let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32");
        (name, Dtype::F32, shape, encode_f32(&v, Dtype::F32).expect("f32"))
    }
    let norm = |module: &str, n: &crate::Norm<B>, out: &mut Vec<RawTensor>| {
        out.push(raw(format!("{module}.weight"), n.weight.val()));
        if let Some(b) = &n.bias {
            out.push(raw(format!("{module}.bias"), b.val()));
        }
    };
    tensors.push(raw(names.embed.clone(), model.embed.val()));
    if let (Some(m), Some(n)) = (&names.embed_norm, &model.embed_norm) {
        norm(m, n, &mut tensors);
    }
    for (l, block) in model.blocks.iter().enumerate() {
        let (n1, n2) = &names.block_norms[l];
        norm(n1, &block.attn_norm, &mut tensors);
        norm(n2, &block.mlp_norm, &mut tensors);
        for (kind, p) in block.projections() {
            let module = spec.hf_module(l, kind);
            tensors.push(raw(format!("{module}.weight"), p.weight.val()));
            if let Some(b) = &p.bias {
                tensors.push(raw(format!("{module}.bias"), b.val()));
            }
        }
    }
    norm(&names.final_norm, &model.final_norm, &mut tensors);
    if let (Some(n), Some(w)) = (&names.lm_head, &model.lm_head) {
        tensors.push(raw(n.clone(), w.val()));
    }
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    write_safetensors(&out.join(WEIGHTS_FILE), &tensors, meta)?;
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(config).expect("JSON").as_bytes())?;
    Ok(())
}
