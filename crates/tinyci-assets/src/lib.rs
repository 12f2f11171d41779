//! The bulk bytes of a site: source archives (uploaded or imported from GitHub), artifacts
//! (content-addressed blobs with a row per run and name), the collection of blobs nothing
//! names, the one sink every byte stream goes to disk through ([`HashingSink`]: hashed
//! while written, size-limited, fsynced, renamed into place), and planning an archive's runs
//! from its task files, and the quota of uploads a holder has not submitted yet.
//!
//! Bytes live as files beside the LMDB store, rows in it. Must not depend on capnp, the
//! queue or any transport: the site wraps these in its `ByteSink` and `AssetSink`
//! capabilities and decides who may call them. Without the `store` feature the crate is the
//! sink alone (what the runner takes for the archives it downloads).

#[cfg(feature = "store")]
mod artifacts;
#[cfg(feature = "store")]
mod plan;
#[cfg(feature = "store")]
mod quota;
mod sink;
#[cfg(feature = "store")]
mod sources;

#[cfg(feature = "store")]
pub use artifacts::{
    ArtifactError, ArtifactStore, DEFAULT_MAX_ARTIFACT_BYTES, MAX_ARTIFACTS_PER_RUN,
    MAX_COMPONENT_BYTES, MAX_NAME_BYTES, MAX_RUN_ARTIFACT_BYTES, NameError, PendingBlob,
    check_run_limits, shown, validate_name,
};
#[cfg(feature = "store")]
pub use plan::{PlanError, plan_archive};
#[cfg(feature = "store")]
pub use quota::{
    MAX_UNSUBMITTED_BYTES, MAX_UNSUBMITTED_UPLOADS, QuotaRefusal, UNSUBMITTED_UPLOAD_TTL,
    UploadLedger, UploadPlace,
};
pub use sink::{HashingSink, SinkError, Stored};
#[cfg(feature = "store")]
pub use sources::{
    ArchiveError, ImportError, MAX_SOURCE_BYTES, MAX_TASK_FILE_BYTES, MAX_TASK_FILES, SourceStore,
    SourceUpload, task_files,
};
#[cfg(feature = "store")]
pub use tinyci_store::records::ArtifactRecord;
