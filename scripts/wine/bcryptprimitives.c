/* ProcessPrng, the one export of Windows 10's bcryptprimitives.dll that
 * Rust's standard library imports. Debian 12's wine (8.0) lacks the DLL, so
 * the Windows smoke test (scripts/cross-build.sh) puts this shim beside
 * kiln.exe; real Windows never loads it. It draws from RtlGenRandom. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
