//! Calendar time in the local time zone (for snapshot names and the DATE
//! column qemu-img prints), through the C library's `localtime_r`.

/// A moment broken down in the local time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month, 1–12.
    pub month: i32,
    /// Day of the month, 1–31.
    pub day: i32,
    /// Hour, 0–23.
    pub hour: i32,
    /// Minute, 0–59.
    pub minute: i32,
    /// Second, 0–60.
    pub second: i32,
    /// Offset from UTC in seconds (east positive).
    pub utc_offset: i64,
}

/// Seconds since the Epoch in the local time zone (`None` if the C library
/// cannot represent it).
pub fn local_time(secs: u64) -> Option<LocalTime> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is a plain C struct for which all-zero is valid, and
    // localtime_r only writes into the struct we pass; both pointers are
    // valid for the duration of the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some(LocalTime {
        year: tm.tm_year + 1900,
        month: tm.tm_mon + 1,
        day: tm.tm_mday,
        hour: tm.tm_hour,
        minute: tm.tm_min,
        second: tm.tm_sec,
        utc_offset: tm.tm_gmtoff,
    })
}
