//! Scheduled operations: `switchover --at TIME` and `restart MEMBER --at TIME` post the
//! operation now, checked as any other, with a time before which no agent acts on it; at its
//! time the leader checks it again against the cluster as it is then, and the agents carry
//! it out with no CLI running. `pgbaton cancel` withdraws one before its time.

use crate::cluster::open_store;
use crate::operate::utc;
use anyhow::{bail, Context, Result};
use pgbaton_core::config::ClientConfig;
use pgbaton_core::model::{HistoryEntry, OpKind, OpPhase, Operation};
use pgbaton_core::ops;
use pgbaton_store::{now_ms, read_view};

/// How close to its time a scheduled operation can still be cancelled: an agent may be
/// acting on it by then (by its own clock: the margin covers clocks a few seconds apart).
const CANCEL_MARGIN_MS: u64 = 15_000;

/// `--at`: `+30s`, `+10m`, `+2h`, `+1d` from now; `YYYY-MM-DD HH:MM[:SS]` in UTC; or an
/// RFC 3339 time with its offset (`2026-12-24T03:00:00+01:00`). Wall-clock ms, in the future.
pub fn parse_at(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    let at = if let Some(rel) = s.strip_prefix('+') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let n: u64 = rel[..split].parse().with_context(|| bad(s))?;
        let unit: u64 = match &rel[split..] {
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => bail!("{}", bad(s)),
        };
        let later = n.checked_mul(unit).filter(|ms| *ms <= 366 * 86_400_000);
        now_ms + later.with_context(|| format!("{}: at most a year ahead", bad(s)))?
    } else {
        absolute(s).map_err(|_| anyhow::anyhow!("{}", bad(s)))?
    };
    if at <= now_ms {
        bail!(
            "--at {s} is in the past ({} UTC): give a time to come",
            utc(at)
        );
    }
    Ok(at)
}

fn bad(s: &str) -> String {
    format!(
        "--at {s:?}: expected +N followed by s, m, h or d (\"+10m\"), a UTC time \
         \"YYYY-MM-DD HH:MM[:SS]\", or an RFC 3339 time with its offset"
    )
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.frac]]` and an optional `Z` or `±HH:MM` (else UTC); the
/// date and time checked by the `time` crate (no parsing features needed for this one form).
fn absolute(s: &str) -> Result<u64> {
    use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<u32> {
        let part = s.get(r).context("too short")?;
        anyhow::ensure!(part.bytes().all(|c| c.is_ascii_digit()), "not a number");
        Ok(part.parse()?)
    };
    anyhow::ensure!(b.len() >= 16 && b[4] == b'-' && b[7] == b'-' && b[13] == b':');
    anyhow::ensure!(b[10] == b' ' || b[10] == b'T');
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
    );
    let mut rest = &s[16..];
    let mut sec = 0;
    if let Some(r) = rest.strip_prefix(':') {
        sec = num(17..19)?;
        rest = r.get(2..).context("seconds")?;
        if let Some(r) = rest.strip_prefix('.') {
            rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
        }
    }
    let offset = match rest {
        "" | "Z" | "z" => UtcOffset::UTC,
        o if o.len() == 6
            && o.is_ascii()
            && (o.starts_with('+') || o.starts_with('-'))
            && &o[3..4] == ":" =>
        {
            let sign: i8 = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om): (i8, i8) = (o[1..3].parse()?, o[4..6].parse()?);
            UtcOffset::from_hms(sign * oh, sign * om, 0)?
        }
        _ => anyhow::bail!("an unknown offset"),
    };
    let date = Date::from_calendar_date(
        i32::try_from(y)?,
        Month::try_from(u8::try_from(mo)?)?,
        u8::try_from(d)?,
    )?;
    let t = Time::from_hms(u8::try_from(h)?, u8::try_from(mi)?, u8::try_from(sec)?)?;
    let at = PrimitiveDateTime::new(date, t).assume_offset(offset);
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).context("a time before 1970")
}

/// Post `kind` to run at `at_ms`, checked against the cluster now (and again at its time).
pub async fn post(cfg: &ClientConfig, kind: OpKind, at_ms: u64, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let cap = pgbaton_core::model::CAP_SCHEDULED_OPERATIONS;
    if let Some(m) = view
        .members
        .iter()
        .find(|m| !m.capabilities.iter().any(|c| c == cap))
    {
        bail!(
            "{} refused: {}'s agent is of an earlier version, which would act on a scheduled operation at once: upgrade every member first",
            kind.name(),
            m.name
        );
    }
    let now = now_ms();
    ops::check(&kind, &ops::Snapshot::at(&view, now), false)
        .map_err(|why| anyhow::anyhow!("{} refused: {why}", kind.name()))?;
    let mut op = Operation::new(format!("{}-{now}", kind.name()), kind.clone(), now);
    op.not_before_ms = Some(at_ms);
    if !store.op_post(&op).await? {
        bail!(
            "{} refused: another operation was posted just now",
            kind.name()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&op)?);
    } else {
        println!(
            "Scheduled: {} {} at {} UTC ({}). The agents carry it out then; `pgbaton list` shows it, `pgbaton cancel` withdraws it.",
            kind.name(),
            kind.members().join(" -> "),
            utc(at_ms),
            op.id
        );
    }
    Ok(())
}

/// Withdraw the scheduled operation before its time.
pub async fn cancel(cfg: &ClientConfig, by: &str) -> Result<()> {
    let store = open_store(cfg)?;
    let now = now_ms();
    let Some(op) = store.op_get().await?.filter(|o| !o.phase.finished()) else {
        println!("Nothing is scheduled.");
        return Ok(());
    };
    let at = op.not_before_ms.unwrap_or(0);
    if !op.scheduled(now + CANCEL_MARGIN_MS) {
        bail!(
            "operation {} ({}) is in flight, not waiting for its time: it cannot be cancelled; follow it with `pgbaton list`",
            op.id,
            op.kind.name()
        );
    }
    let message = format!("cancelled by {by} before its time ({} UTC)", utc(at));
    let cancelled = op.at(OpPhase::Failed, Some(message.clone()), now);
    if !store
        .op_update(&op.id, OpPhase::Requested, &cancelled)
        .await?
    {
        bail!("operation {} changed meanwhile: see `pgbaton list`", op.id);
    }
    let entry = HistoryEntry {
        time_ms: now,
        operation: op.kind.name().to_string(),
        members: op.kind.members(),
        result: "cancelled".into(),
        timeline: None,
        lsn: None,
        message: Some(message),
    };
    if let Err(e) = store.history_append(&entry).await {
        eprintln!("warning: the cancel is done, but not in the history: {e:#}");
    }
    println!(
        "Cancelled: {} {} (was due at {} UTC).",
        op.kind.name(),
        op.kind.members().join(" -> "),
        utc(at)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_takes_relative_utc_and_rfc3339_times_in_the_future() {
        let now = 1_796_300_000_000; // 2026-12-03 12:13:20 UTC
        assert_eq!(parse_at("+30s", now).unwrap(), now + 30_000);
        assert_eq!(parse_at("+10m", now).unwrap(), now + 600_000);
        assert_eq!(parse_at("+2h", now).unwrap(), now + 7_200_000);
        assert_eq!(
            parse_at("2026-12-03 13:00", now).unwrap(),
            1_796_302_800_000
        );
        assert_eq!(
            parse_at("2026-12-03 13:00:30", now).unwrap(),
            1_796_302_830_000
        );
        assert_eq!(
            parse_at("2026-12-03T14:00:00+01:00", now).unwrap(),
            1_796_302_800_000
        );
        assert!(parse_at("2026-12-03 12:00", now)
            .unwrap_err()
            .to_string()
            .contains("in the past"));
        for bad in [
            "+10",
            "+10y",
            "tomorrow",
            "+",
            "2026-13-01 00:00",
            "2026-12-03 13:00+0é00",
            "+99999999999999999d",
            "+400d",
        ] {
            assert!(parse_at(bad, now).is_err(), "{bad}");
        }
    }
}
