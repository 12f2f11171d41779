//! The one clock: every piece of logic that needs "now" is handed one of these, so leases,
//! grant expiry, retention and delivery forgetting all run on a test's virtual clock as on
//! the system's. Core reads no OS clock itself; the site builds the system one at its edge.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub type Clock = Rc<dyn Fn() -> u64>;

/// `millis` since the Unix epoch as a `SystemTime`, for APIs that take one.
pub fn system_time(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_map_onto_system_time() {
        assert_eq!(
            system_time(1_500).duration_since(UNIX_EPOCH).ok(),
            Some(Duration::from_millis(1_500))
        );
    }
}
