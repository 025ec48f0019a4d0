// Times in image configs and SBOMs: RFC 3339, as Go's time.Time reads them (docker, containerd, skopeo decode a
// config's `created` with it). JavaScript's Date.parse is looser — it rolls 2024-02-30 over to March 1st and takes
// a time without a zone as local time — so a value it accepts can still make the image unreadable
// ("day out of range").

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/;

/** Whether `s` is an RFC 3339 date-time with a zone and every field within its calendar's range. */
export function isRfc3339Time(s: string): boolean {
  const m = RFC3339.exec(s);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  const zoneOk = m[9] === undefined || (Number(m[9]) <= 23 && Number(m[10]) <= 59);
  return (
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= daysInMonth &&
    hour <= 23 &&
    minute <= 59 &&
    second <= 59 &&
    zoneOk
  );
}
