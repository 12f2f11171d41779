//! What one holder may make the site keep before submitting: uploads in progress and
//! archives stored that no submission names yet, counted per holder, with a byte budget that
//! also caps each new upload. Single-threaded, like the site.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Uploads one holder may have in progress or stored and not yet submitted.
pub const MAX_UNSUBMITTED_UPLOADS: usize = 8;
/// Bytes of archives one holder may have stored and not yet submitted (a single upload is
/// also held to what is left of it).
pub const MAX_UNSUBMITTED_BYTES: u64 = 1024 * 1024 * 1024;
/// How long an uploaded archive no submission names is kept.
pub const UNSUBMITTED_UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// Why an upload was refused before it began.
#[derive(Debug, thiserror::Error)]
pub enum QuotaRefusal {
    /// Too many uploads in progress or waiting.
    #[error(
        "{held} source archives of yours are uploading or uploaded and not yet submitted (at \
         most {MAX_UNSUBMITTED_UPLOADS}): submit them, or wait until they expire an hour \
         after upload"
    )]
    Count {
        /// How many the holder has.
        held: usize,
    },
    /// Too many bytes waiting.
    #[error(
        "{held} bytes of your source archives are uploaded and not yet submitted (at most \
         {MAX_UNSUBMITTED_BYTES}): submit them, or wait until they expire an hour after upload"
    )]
    Bytes {
        /// How many bytes the holder has waiting.
        held: u64,
    },
}

/// Per holder, the uploads in progress and the archives stored and not yet submitted.
#[derive(Debug, Default)]
pub struct UploadLedger(RefCell<HashMap<String, HolderUploads>>);

#[derive(Debug, Default)]
struct HolderUploads {
    in_progress: usize,
    /// Archive digest → (size, when stored, ms).
    waiting: HashMap<Vec<u8>, (u64, u64)>,
}

/// An upload's place in its holder's quota: given back when the upload ends.
#[derive(Debug)]
pub struct UploadPlace {
    ledger: Rc<UploadLedger>,
    holder: String,
}

impl UploadLedger {
    /// Takes a place for one more upload by `holder` at `now_ms`, and the most bytes it may
    /// bring; refuses when the holder is at its quota.
    pub fn begin(
        self: &Rc<Self>,
        holder: &str,
        now_ms: u64,
    ) -> Result<(UploadPlace, u64), QuotaRefusal> {
        let mut holders = self.0.borrow_mut();
        let uploads = holders.entry(holder.to_owned()).or_default();
        let ttl = u64::try_from(UNSUBMITTED_UPLOAD_TTL.as_millis()).unwrap_or(u64::MAX);
        uploads
            .waiting
            .retain(|_, (_, stored_at)| stored_at.saturating_add(ttl) > now_ms);
        let held = uploads.in_progress + uploads.waiting.len();
        if held >= MAX_UNSUBMITTED_UPLOADS {
            return Err(QuotaRefusal::Count { held });
        }
        let bytes: u64 = uploads.waiting.values().map(|(size, _)| size).sum();
        if bytes >= MAX_UNSUBMITTED_BYTES {
            return Err(QuotaRefusal::Bytes { held: bytes });
        }
        uploads.in_progress += 1;
        let place = UploadPlace {
            ledger: self.clone(),
            holder: holder.to_owned(),
        };
        Ok((place, MAX_UNSUBMITTED_BYTES - bytes))
    }

    /// A submission by `holder` names archive `sha256`: it no longer counts against them.
    pub fn submitted(&self, holder: &str, sha256: &[u8]) {
        let mut holders = self.0.borrow_mut();
        if let Some(uploads) = holders.get_mut(holder) {
            uploads.waiting.remove(sha256);
            if uploads.in_progress == 0 && uploads.waiting.is_empty() {
                holders.remove(holder);
            }
        }
    }
}

impl UploadPlace {
    /// The upload stored archive `sha256` of `size` bytes at `now_ms`.
    pub fn stored(self, sha256: &[u8], size: u64, now_ms: u64) {
        let mut holders = self.ledger.0.borrow_mut();
        let uploads = holders.entry(self.holder.clone()).or_default();
        uploads.waiting.insert(sha256.to_vec(), (size, now_ms));
    }
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut holders = self.ledger.0.borrow_mut();
        if let Some(uploads) = holders.get_mut(&self.holder) {
            uploads.in_progress = uploads.in_progress.saturating_sub(1);
            if uploads.in_progress == 0 && uploads.waiting.is_empty() {
                holders.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3600 * 1000;

    #[test]
    fn a_holder_is_held_to_its_count_and_its_places_come_back() {
        let ledger = Rc::new(UploadLedger::default());
        let mut places = Vec::new();
        for _ in 0..MAX_UNSUBMITTED_UPLOADS {
            places.push(ledger.begin("a", 0).unwrap().0);
        }
        assert!(matches!(
            ledger.begin("a", 0),
            Err(QuotaRefusal::Count { held }) if held == MAX_UNSUBMITTED_UPLOADS
        ));
        assert!(
            ledger.begin("b", 0).is_ok(),
            "another holder is not affected"
        );
        // An abandoned upload gives its place back; a stored one keeps it until submitted.
        drop(places.pop());
        places.pop().unwrap().stored(b"sha", 10, 0);
        assert!(ledger.begin("a", 0).is_ok());
        assert!(ledger.begin("a", 0).is_ok());
        ledger.submitted("a", b"sha");
        let (_, limit) = ledger.begin("a", 0).unwrap();
        assert_eq!(limit, MAX_UNSUBMITTED_BYTES);
    }

    #[test]
    fn bytes_waiting_cap_the_next_upload_and_expire_with_the_hour() {
        let ledger = Rc::new(UploadLedger::default());
        let (place, _) = ledger.begin("a", 0).unwrap();
        place.stored(b"big", MAX_UNSUBMITTED_BYTES - 5, 0);
        let (_, limit) = ledger.begin("a", 0).unwrap();
        assert_eq!(limit, 5);
        let (place, _) = ledger.begin("a", 0).unwrap();
        place.stored(b"more", 5, 0);
        assert!(matches!(
            ledger.begin("a", 1),
            Err(QuotaRefusal::Bytes { .. })
        ));
        assert!(
            ledger.begin("a", HOUR_MS + 1).is_ok(),
            "an hour on, nothing waits"
        );
    }
}
