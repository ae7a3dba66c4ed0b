use super::*;

/// The runner may hold any store behind `Box<dyn Store>` or `Arc<dyn Store>`.
#[test]
fn the_store_trait_is_object_safe() {
    fn boxed(_: Option<Box<dyn Store>>) {}
    boxed(None);
}

#[test]
fn message_ids_sort_by_time_and_parse_back() {
    let early = MessageId::generate(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    let late = MessageId::generate(SystemTime::UNIX_EPOCH + Duration::from_secs(2));
    assert!(early < late);
    assert_eq!(MessageId::parse(early.as_str()).unwrap(), early);
    for bad in [
        "",
        "../../etc/passwd",
        "0123456789abcdef0123456789aG",
        "0123",
    ] {
        assert!(MessageId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_null_reverse_path_has_no_address() {
    for null in ["", "<>", " <> "] {
        assert_eq!(sender_address(null), None, "{null:?}");
    }
    assert_eq!(sender_address("<a@example.com>"), Some("a@example.com"));
    assert_eq!(sender_address("a@example.com"), Some("a@example.com"));
}

#[test]
fn times_are_kept_as_epoch_milliseconds() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    assert_eq!(millis(t).unwrap(), 1_700_000_000_123);
    assert_eq!(from_millis(1_700_000_000_123), t);
    assert!(millis(SystemTime::UNIX_EPOCH - Duration::from_secs(1)).is_err());
}
