// Tests of bento/clients/ninjatrader under Mono, run by tests/test_ninjatrader.py.
//
// A tiny runner: every test prints "ok <name>" or "FAIL <name>: <why>"; lines starting with
// "data " carry figures for the pytest side; the exit code is the number of failures (capped).
// Modes:
//   unit <cases-dir>                      tiers and decisions against smc_core/policy.py's own
//                                         table, JSON shapes, bar times through DST (expected UTC
//                                         from Python's calendar)
//   http <url> <key> <bars.csv>           the client against the real service, and against a
//                                         scripted responder (failures, delays, resets) that
//                                         forwards to the real service when told to
//   replay <url> <key> <bars.csv> <first> <out.jsonl>
//                                         every bar from <first> through the client: the answers
//   strategy <url> <key> <bars.csv> <zone> <first> <positions.csv> <full> <contracts> <out.jsonl>
//                                         SmcAutobot.cs through the NinjaScript shim

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Runtime.Serialization;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.Strategies;
using Smc.Client;

namespace Smc.Tests
{
    internal sealed class AssertionFailed : Exception
    {
        public AssertionFailed(string message) : base(message) { }
    }

    internal static class Program
    {
        private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
        private static int failures;

        private static int Main(string[] args)
        {
            switch (args.Length > 0 ? args[0] : "")
            {
                case "unit": Unit(args[1]); break;
                case "http": Http(args[1], args[2], args[3]); break;
                case "replay": Replay(args[1], args[2], args[3], int.Parse(args[4], Inv), args[5]); break;
                case "strategy":
                    StrategyRun(args[1], args[2], args[3], args[4], int.Parse(args[5], Inv), args[6],
                                double.Parse(args[7], Inv), int.Parse(args[8], Inv), args[9]);
                    break;
                default:
                    Console.Error.WriteLine("usage: SmcTests.exe unit|http|replay|strategy ...");
                    return 2;
            }
            Console.WriteLine(failures == 0 ? "all passed" : failures + " failed");
            return Math.Min(failures, 100);
        }

        // ------------------------------------------------------------ the runner

        private static void Test(string name, Action body)
        {
            var clock = Stopwatch.StartNew();
            try
            {
                body();
                Console.WriteLine("ok {0} ({1} ms)", name, clock.ElapsedMilliseconds);
            }
            catch (Exception error)
            {
                failures++;
                Console.WriteLine("FAIL {0}: {1}", name, error is AssertionFailed ? error.Message : error.ToString());
            }
        }

        private static void Check(bool condition, string what)
        {
            if (!condition)
                throw new AssertionFailed(what);
        }

        private static void Equal<T>(T expected, T actual, string what)
        {
            if (!EqualityComparer<T>.Default.Equals(expected, actual))
                throw new AssertionFailed(what + ": expected " + expected + ", got " + actual);
        }

        private static SmcServiceException Throws(Func<Task> call)
        {
            try
            {
                call().GetAwaiter().GetResult();
            }
            catch (SmcServiceException error)
            {
                return error;
            }
            throw new AssertionFailed("expected SmcServiceException, got an answer");
        }

        // ------------------------------------------------------------ unit

        private static void Unit(string cases)
        {
            Test("tiers_both_ways", () =>
            {
                Equal(1.0, SmcPolicy.SizeFraction(0.70, 0.55, 0.70), "0.70 is full");
                Equal(0.5, SmcPolicy.SizeFraction(0.6999, 0.55, 0.70), "just under 0.70 is half");
                Equal(0.5, SmcPolicy.SizeFraction(0.55, 0.55, 0.70), "the threshold itself is half");
                Equal(0.0, SmcPolicy.SizeFraction(0.5499, 0.55, 0.70), "under the threshold is none");
                Equal(0.0, SmcPolicy.SizeFraction(0.59, 0.60, 0.70), "a promoted threshold of 0.60 moves the half tier");
                var three = new PolicySettings { Contracts = 3 };
                Equal(2, SmcPolicy.ContractsFor(0.6, three), "half of 3 rounds to even, as Python's round(1.5)");
                Equal(2, SmcPolicy.ContractsFor(0.6, new PolicySettings { Contracts = 5 }), "half of 5: round(2.5) = 2");
                Equal(1, SmcPolicy.ContractsFor(0.6, new PolicySettings { Contracts = 1 }), "at least one contract");
                Equal(3, SmcPolicy.ContractsFor(0.9, three), "full size");
                Equal(0, SmcPolicy.ContractsFor(0.5, three), "none");
                var served = new PredictAnswer { Threshold = 0.62 };
                PolicySettings settings = SmcPolicy.For(served, 2, 0.55, 0.70);
                Check(settings.HalfThreshold == 0.62 && settings.FullThreshold == 0.70, "the answer's threshold is the half tier");
                settings = SmcPolicy.For(new PredictAnswer { Threshold = 0.75 }, 2, 0.55, 0.70);
                Check(settings.FullThreshold == 0.75, "full never below the threshold");
                settings = SmcPolicy.For(new PredictAnswer(), 2, 0.58, 0.70);
                Check(settings.HalfThreshold == 0.58, "no threshold in the answer: the strategy's");
            });

            Test("decide_matches_smc_core_policy", () =>
            {
                // one line per case, written by smc_core.policy.decide: probabilities, position, full, half,
                // contracts, stop, target -> action, direction, contracts, size fraction, label
                int count = 0;
                foreach (string line in File.ReadAllLines(Path.Combine(cases, "decisions.tsv")))
                {
                    string[] f = line.Split('\t');
                    var p = new Probabilities { Long = D(f[0]), Short = D(f[1]), Skip = D(f[2]) };
                    var settings = new PolicySettings { FullThreshold = D(f[4]), HalfThreshold = D(f[5]), Contracts = int.Parse(f[6], Inv) };
                    var risk = new Risk { StopDistance = D(f[7]), TargetDistance = D(f[8]), TickSize = 0.25 };
                    Decision d = SmcPolicy.Decide(p, int.Parse(f[3], Inv), risk, settings);
                    string got = string.Join("\t", d.Action.ToString().ToLowerInvariant(), d.Direction.ToString(Inv),
                                             d.Contracts.ToString(Inv), d.SizeFraction.ToString("R", Inv), d.Label,
                                             d.StopDistance.ToString("R", Inv), d.TargetDistance.ToString("R", Inv));
                    string expected = string.Join("\t", f.Skip(9));
                    Equal(expected, got, "case " + count + " (" + string.Join(" ", f.Take(9)) + ")");
                    count++;
                }
                Check(count >= 100, "the table has the cases: " + count);
            });

            Test("json_answer_and_request_shapes", () =>
            {
                const string text = "{\"label\":\"skip\",\"confidence\":0.4,\"probabilities\":{\"long\":0.4,\"short\":0.35,\"skip\":0.25},"
                                    + "\"model_version\":\"smc-lora/3\",\"request_id\":\"r-1\",\"position_size\":0.0,\"raw_label\":\"long\","
                                    + "\"threshold\":0.55,\"risk\":{\"atr\":2.16,\"stop_distance\":3.25,\"target_distance\":3.25,"
                                    + "\"stop_price\":null,\"target_price\":null,\"max_holding_bars\":null,\"tick_size\":0.25},"
                                    + "\"processing_time_ms\":6.2,\"bars_from_store\":19,\"a_later_field\":[1,{\"x\":2}]}";
                PredictAnswer answer = Json.Parse<PredictAnswer>(text);
                Check(answer.Problem() == null, "complete: " + answer.Problem());
                Check(answer.Label == "skip" && answer.RawLabel == "long" && answer.Probabilities.Short == 0.35, "fields");
                Check(answer.Risk.StopPrice == null && answer.Risk.MaxHoldingBars == null && answer.Risk.StopDistance == 3.25,
                      "nulls of the risk block");
                Check(answer.BarsFromStore == 19 && answer.Threshold == 0.55, "bars_from_store, threshold");
                PredictAnswer old = Json.Parse<PredictAnswer>("{\"label\":\"long\",\"confidence\":0.8,\"probabilities\":{\"long\":0.8,\"short\":0.1,\"skip\":0.1}}");
                Check(old.Problem() != null && old.Problem().Contains("risk"), "an answer without risk is not traded");

                var bars = new List<Bar>
                {
                    Bar.Of(new DateTime(2024, 3, 5, 14, 31, 0, DateTimeKind.Utc), 5000.25, 5001, 4999.75, 5000.5, 120),
                    Bar.Of(new DateTime(2024, 3, 5, 14, 32, 0, DateTimeKind.Utc), 5000.5, 5002, 5000.25, 5001.75, 95, -12),
                };
                string request = Json.ToText(PredictRequest.For(bars, "ES", "1m", new DateTime(2024, 3, 5, 14, 32, 0, 100, DateTimeKind.Utc)));
                Check(request.StartsWith("{\"context_bars\":[{\"time_utc\":\"2024-03-05T14:31:00.0000000Z\",\"o\":5000.25,\"h\":5001,\"l\":4999.75,\"c\":5000.5,\"volume\":120}]",
                                         StringComparison.Ordinal), request);
                Check(request.Contains("\"current_bar\":{\"time_utc\":\"2024-03-05T14:32:00.0000000Z\",\"o\":5000.5,\"h\":5002,\"l\":5000.25,\"c\":5001.75,\"volume\":95,\"delta\":-12}"),
                      request);
                Check(request.Contains("\"features\":{}") && request.Contains("\"metadata\":{\"symbol\":\"ES\",\"timeframe\":\"1m\",\"request_time\":\"2024-03-05T14:32:00.1000000Z\"}"),
                      request);
                Check(Json.Parse<PredictRequest>(request).CurrentBar.Delta == -12, "round trip");
                string withHorizon = Json.ToText(PredictRequest.For(bars, "ES", "5m", new DateTime(2024, 3, 5, 14, 32, 0, DateTimeKind.Utc), "h15"));
                Check(withHorizon.Contains("\"metadata\":{\"symbol\":\"ES\",\"timeframe\":\"5m\",\"horizon\":\"h15\",\"request_time\":"),
                      withHorizon);  // the model line's horizon, only when the strategy names one (above: none)
                var german = new CultureInfo("de-DE");
                CultureInfo saved = Thread.CurrentThread.CurrentCulture;
                Thread.CurrentThread.CurrentCulture = german;  // NinjaTrader runs in the user's culture: "5000,25" must never appear
                try
                {
                    Check(Json.ToText(bars[0]).Contains("5000.25"), "numbers are invariant in a German culture");
                }
                finally
                {
                    Thread.CurrentThread.CurrentCulture = saved;
                }
                bool refused = false;
                try { Bar.Of(new DateTime(2024, 3, 5, 14, 31, 0, DateTimeKind.Unspecified), 1, 1, 1, 1, 1); }
                catch (ArgumentException) { refused = true; }
                Check(refused, "a bar time that is not UTC is refused");
                Check(Bar.Of(DateTime.UtcNow, 1, 0.5, 0.9, 1, 1).Problem() != null, "high below low is found before sending");
                Check(Bar.Of(DateTime.UtcNow, double.NaN, 2, 0.9, 1, 1).Problem() != null, "NaN is found before sending");
            });

            Test("json_error_bodies", () =>
            {
                ErrorBody body;
                string problem;
                Check(Json.TryParse("{\"error\":\"too few bars\",\"code\":422,\"details\":{\"errors\":[{\"path\":\"context_bars\",\"message\":\"send 19 more\"}],\"minimum_bars\":49,\"missing_bars\":19}}",
                                    out body, out problem), problem);
                Check(body.Code == 422 && body.Details.MissingBars == 19 && body.Details.MinimumBars == 49
                      && body.Details.Errors[0].Path == "context_bars", "details");
                Check(Json.TryParse("{\"error\":\"model failure\",\"code\":500,\"details\":{\"type\":\"RuntimeError\"}}", out body, out problem)
                      && body.Details.Errors == null, "other details are ignored");
                Check(!Json.TryParse("<html>bad gateway</html>", out body, out problem), "a proxy's page is no error body");
                Check(!Json.TryParse("", out body, out problem), "nor is an empty body");
                Check(!Json.TryParse("{\"error\":\"x\",\"code\":\"not a number\"}", out body, out problem), "nor a wrong type");
            });

            Test("bar_times_to_utc_through_dst", () =>
            {
                // zone, wall clock in it, the UTC close Python's calendar gives; a series in order
                int count = 0, ambiguous = 0;
                var previous = new Dictionary<string, DateTime?>();
                foreach (string line in File.ReadAllLines(Path.Combine(cases, "times.tsv")))
                {
                    string[] f = line.Split('\t');
                    TimeZoneInfo zone = TimeZoneInfo.FindSystemTimeZoneById(f[1]);
                    DateTime wall = DateTime.ParseExact(f[2], "yyyy-MM-dd HH:mm:ss", Inv, DateTimeStyles.None);
                    DateTime expected = DateTime.ParseExact(f[3], "yyyy-MM-dd HH:mm:ss", Inv,
                                                            DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal);
                    DateTime? before;
                    previous.TryGetValue(f[0], out before);
                    DateTime utc = SmcTime.ToUtc(wall, zone, before);
                    Equal(expected, utc, f[0] + " " + f[1] + " " + f[2]);
                    Equal(DateTimeKind.Utc, utc.Kind, "kind");
                    if (zone.IsAmbiguousTime(wall))
                        ambiguous++;
                    previous[f[0]] = utc;
                    count++;
                }
                Check(count > 1000 && ambiguous >= 120, "cases " + count + ", ambiguous " + ambiguous);
                TimeZoneInfo york = TimeZoneInfo.FindSystemTimeZoneById("America/New_York");
                bool refused = false;
                try { SmcTime.ToUtc(new DateTime(2024, 3, 10, 2, 30, 0), york); }
                catch (ArgumentException) { refused = true; }
                Check(refused, "02:30 on 2024-03-10 does not exist in New York");
                Equal(new DateTime(2024, 11, 3, 5, 30, 0, DateTimeKind.Utc), SmcTime.ToUtc(new DateTime(2024, 11, 3, 1, 30, 0), york),
                      "an ambiguous time without a bar before: the first occurrence (EDT)");
                Equal(new DateTime(2024, 11, 3, 6, 30, 0, DateTimeKind.Utc),
                      SmcTime.ToUtc(new DateTime(2024, 11, 3, 1, 30, 0), york, new DateTime(2024, 11, 3, 6, 29, 0, DateTimeKind.Utc)),
                      "after 01:29 EST, 01:30 is EST");
                Equal("1m", SmcTime.Timeframe(true, false, 1), "minute bars");
                Equal("30s", SmcTime.Timeframe(false, true, 30), "second bars");
                Check(SmcTime.Timeframe(false, false, 500) == null, "tick bars are not served");
            });
        }

        private static double D(string text) { return double.Parse(text, NumberStyles.Float, Inv); }

        // ------------------------------------------------------------ bars from the pytest side

        private sealed class BarRow
        {
            public DateTime Wall;
            public DateTime Utc;
            public double Open, High, Low, Close;
            public long Volume;
            public bool LastOfSession;
        }

        // wall (in the chart's zone), utc, open, high, low, close, volume, last_of_session
        private static List<BarRow> ReadBars(string path)
        {
            var rows = new List<BarRow>();
            foreach (string line in File.ReadAllLines(path).Skip(1))
            {
                string[] f = line.Split(',');
                rows.Add(new BarRow
                {
                    Wall = DateTime.ParseExact(f[0], "yyyy-MM-dd HH:mm:ss", Inv, DateTimeStyles.None),
                    Utc = DateTime.ParseExact(f[1], "yyyy-MM-dd HH:mm:ss", Inv, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal),
                    Open = D(f[2]), High = D(f[3]), Low = D(f[4]), Close = D(f[5]), Volume = long.Parse(f[6], Inv),
                    LastOfSession = f[7] == "1"
                });
            }
            return rows;
        }

        private static PredictRequest RequestEndingAt(List<BarRow> rows, int end, int count = 49, string timeframe = "1m",
                                                      TimeSpan shift = default(TimeSpan))
        {
            var bars = new List<Bar>();
            for (int i = end - count + 1; i <= end; i++)
                bars.Add(Bar.Of(rows[i].Utc + shift, rows[i].Open, rows[i].High, rows[i].Low, rows[i].Close, rows[i].Volume));
            return PredictRequest.For(bars, "ES", timeframe, rows[end].Utc + shift);
        }

        // ------------------------------------------------------------ http

        private static void Http(string url, string key, string barsPath)
        {
            List<BarRow> rows = ReadBars(barsPath);
            var client = new SmcClient(url, key);
            TimeSpan roomy = TimeSpan.FromSeconds(10);
            PredictRequest request = RequestEndingAt(rows, 200);

            Test("predict_round_trip_typed_with_risk", () =>
            {
                PredictAnswer answer = client.PredictAsync(request, roomy).GetAwaiter().GetResult();
                Probabilities p = answer.Probabilities;
                Check(Math.Abs(p.Long + p.Short + p.Skip - 1) < 1e-9, "probabilities sum to 1");
                Check(answer.Confidence == Math.Max(p.Long, Math.Max(p.Short, p.Skip)), "confidence is the top probability");
                Check(answer.ModelVersion.Length > 0 && Guid.Parse(answer.RequestId) != Guid.Empty, "version and request id");
                Check(answer.BarsFromStore == 0 && answer.ProcessingTimeMs > 0, "49 bars sent, none from the store");
                Risk risk = answer.Risk;
                Check(risk.TickSize == 0.25 && risk.Atr > 0, "tick and ATR");
                Check(Math.Abs(risk.StopDistance / 0.25 - Math.Round(risk.StopDistance / 0.25)) < 1e-9, "stop in whole ticks");
                if (answer.Label == "long")
                    Check(risk.StopPrice < rows[200].Close + 0.125 && risk.TargetPrice > rows[200].Close - 0.125, "long prices");
                else if (answer.Label == "short")
                    Check(risk.StopPrice > rows[200].Close - 0.125 && risk.TargetPrice < rows[200].Close + 0.125, "short prices");
                else
                    Check(risk.StopPrice == null && risk.TargetPrice == null, "no prices on skip");
                Console.WriteLine("data round_trip label={0} version={1} stop_distance={2}", answer.Label, answer.ModelVersion,
                                  risk.StopDistance.ToString("R", Inv));
            });

            Test("unprocessable_422_is_not_retried_and_its_body_is_read", () =>
            {
                using (var proxy = new Responder(url, Step.Forward()))
                {
                    var through = new SmcClient(proxy.Url, key);
                    PredictRequest wrong = RequestEndingAt(rows, 200, timeframe: "5m");
                    SmcServiceException error = Throws(() => through.PredictAsync(wrong, roomy));
                    Equal(422, error.Status, "status");
                    Equal(1, error.Attempts, "attempts");
                    Equal(1, proxy.Requests, "requests that reached the service");
                    Check(error.Body != null && error.Body.Code == 422 && error.Body.Details.Errors[0].Path == "metadata.timeframe",
                          "error body: " + error.RawBody);
                    Check(error.Message.Contains("metadata.timeframe"), "the message names the field: " + error.Message);

                    // too few bars where nothing is stored: the contract's missing_bars
                    PredictRequest unseen = RequestEndingAt(rows, 200, count: 30, shift: TimeSpan.FromDays(400));
                    error = Throws(() => through.PredictAsync(unseen, roomy));
                    Check(error.Status == 422 && error.Body.Details.MissingBars == 19 && error.Body.Details.MinimumBars == 49,
                          "missing bars: " + error.RawBody);
                    Equal(2, proxy.Requests, "requests that reached the service");
                }
            });

            Test("unauthorized_401_is_not_retried", () =>
            {
                using (var proxy = new Responder(url, Step.Forward()))
                {
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, "wrong-key").PredictAsync(request, roomy));
                    Check(error.Status == 401 && error.Attempts == 1 && proxy.Requests == 1, error.Message);
                }
            });

            Test("fails_twice_then_the_real_answer_on_the_third_attempt", () =>
            {
                using (var proxy = new Responder(url, Step.Status(503), Step.Reset(), Step.Forward()))
                {
                    var clock = Stopwatch.StartNew();
                    PredictAnswer answer = new SmcClient(proxy.Url, key).PredictAsync(request, roomy).GetAwaiter().GetResult();
                    long ms = clock.ElapsedMilliseconds;
                    Check(answer.Problem() == null, "a real answer");
                    Equal(3, proxy.Requests, "attempts");
                    Check(ms >= 300, "waited 100 ms, then 200 ms: " + ms + " ms");
                    Console.WriteLine("data fails_twice_ms={0}", ms);
                }
            });

            Test("retries_on_5xx_and_429_only", () =>
            {
                using (var proxy = new Responder(url, Step.Status(500), Step.Status(429), Step.Forward()))
                {
                    new SmcClient(proxy.Url, key).PredictAsync(request, roomy).GetAwaiter().GetResult();
                    Equal(3, proxy.Requests, "500 and 429 retried");
                }
                using (var proxy = new Responder(url, Step.Status(502), Step.Status(504), Step.Status(429)))
                {
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, roomy));
                    Check(error.Status == 429 && error.Attempts == 3 && proxy.Requests == 3 && !error.DeadlineExceeded,
                          "three attempts, then the last error: " + error.Message);
                    Check(error.Body != null && error.Body.Error == "scripted 429", "its body");
                }
                foreach (int status in new[] { 400, 404, 409, 413 })
                    using (var proxy = new Responder(url, Step.Status(status), Step.Forward()))
                    {
                        SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, roomy));
                        Check(error.Status == status && error.Attempts == 1 && proxy.Requests == 1, status + " not retried");
                    }
                using (var proxy = new Responder(url, Step.Status(200, "<html>not json</html>"), Step.Forward()))
                {
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, roomy));
                    Check(error.Status == 200 && error.Attempts == 1 && proxy.Requests == 1, "an unreadable 200 is not retried");
                }
            });

            Test("refused_connection_is_retried_three_times", () =>
            {
                int port = FreePort();  // nothing listens there
                var clock = Stopwatch.StartNew();
                SmcServiceException error = Throws(() => new SmcClient("http://127.0.0.1:" + port, key).PredictAsync(request, roomy));
                long ms = clock.ElapsedMilliseconds;
                Check(error.Status == 0 && error.Attempts == 3 && !error.DeadlineExceeded, error.Message);
                Check(ms >= 300 && ms < 2000, "two waits, no hang: " + ms + " ms");
            });

            Test("the_deadline_covers_all_attempts", () =>
            {
                using (var proxy = new Responder(url, Step.Status(503, delayMs: 150), Step.Status(503, delayMs: 150),
                                                 Step.Status(503, delayMs: 150)))
                {
                    var clock = Stopwatch.StartNew();
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, SmcClient.DefaultDeadline));
                    long ms = clock.ElapsedMilliseconds;
                    // 150 ms answer + 100 ms wait + the second attempt cut at 300 ms
                    Check(error.DeadlineExceeded && error.Status == 503 && error.Attempts == 2, error.Message);
                    Check(ms >= 295 && ms < 450, "stopped at the deadline: " + ms + " ms");
                    Console.WriteLine("data deadline_ms={0}", ms);
                }
            });

            Test("a_slow_service_gives_no_signal_within_the_deadline", () =>
            {
                using (var proxy = new Responder(url, Step.Forward(delayMs: 600)))
                {
                    var clock = Stopwatch.StartNew();
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, SmcClient.DefaultDeadline));
                    long ms = clock.ElapsedMilliseconds;
                    Check(error.DeadlineExceeded && error.Status == 0 && error.Attempts == 1, error.Message);
                    Check(ms >= 295 && ms < 450, "no answer and back at the deadline: " + ms + " ms");
                }
                var cancel = new CancellationTokenSource();
                using (var proxy = new Responder(url, Step.Forward(delayMs: 600)))
                {
                    cancel.CancelAfter(50);
                    SmcServiceException error = Throws(() => new SmcClient(proxy.Url, key).PredictAsync(request, roomy, cancel.Token));
                    Check(!error.DeadlineExceeded && error.Message.StartsWith("cancelled"), "the caller's cancellation: " + error.Message);
                }
            });

            Test("upload_bars_counts_and_is_idempotent", () =>
            {
                var bars = rows.Skip(300).Take(400)
                               .Select(r => Bar.Of(r.Utc, r.Open, r.High, r.Low, r.Close, r.Volume)).ToList();
                var upload = new BarsUpload { Symbol = "ES", Timeframe = "1m", Bars = bars };
                UploadResult first = client.UploadBarsAsync(upload, roomy).GetAwaiter().GetResult();
                Check(first.Received == 400 && first.Inserted + first.Unchanged == 400 && first.Conflicting == 0,
                      "first: " + Json.ToText(first));
                UploadResult again = client.UploadBarsAsync(upload, roomy).GetAwaiter().GetResult();
                Check(again.Inserted == 0 && again.Unchanged == 400 && again.Conflicting == 0, "again: " + Json.ToText(again));
                Check(first.FirstBar.StartsWith(rows[300].Utc.ToString("yyyy-MM-ddTHH:mm:ss", Inv)), "first bar " + first.FirstBar);
                Console.WriteLine("data upload inserted={0} unchanged={1} again_unchanged={2}", first.Inserted, first.Unchanged,
                                  again.Unchanged);
                bars[5].High = bars[5].Low - 1;
                SmcServiceException error = Throws(() => client.UploadBarsAsync(upload, roomy));
                Check(error.Status == 422 && error.Attempts == 1 && error.Body.Details.Errors.Any(e => e.Path == "bars[5]"),
                      "a bad bar is named: " + error.RawBody);
            });

            Test("the_shared_http_client_is_configured_once", () =>
            {
                HttpClient shared = SmcClient.SharedHttp;
                Equal(Timeout.InfiniteTimeSpan, shared.Timeout, "no timeout on the shared client: deadlines are per call");
                // a second chart, a re-enabled strategy: new clients after requests were sent
                var again = new SmcClient(url + "/", key);
                again.PredictAsync(request, roomy).GetAwaiter().GetResult();
                Check(new SmcClient("http://127.0.0.1:" + FreePort(), key) != null, "a third instance, another service");
                Check(ReferenceEquals(shared, SmcClient.SharedHttp) && shared.Timeout == Timeout.InfiniteTimeSpan, "unchanged");
                bool refused = false;
                try { shared.Timeout = TimeSpan.FromSeconds(1); }
                catch (InvalidOperationException) { refused = true; }
                Check(refused, ".NET refuses to change Timeout after the first request (the defect this design avoids)");
            });
        }

        private static int FreePort()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            int port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            return port;
        }

        // ------------------------------------------------------------ replay

        [DataContract]
        private sealed class ReplayLine
        {
            [DataMember(Name = "row", Order = 0)] public int Row;
            [DataMember(Name = "answer", Order = 1)] public PredictAnswer Answer;
        }

        private static void Replay(string url, string key, string barsPath, int first, string output)
        {
            List<BarRow> rows = ReadBars(barsPath);
            var client = new SmcClient(url, key);
            var latencies = new List<double>();
            Test("replay_through_the_client", () =>
            {
                using (var writer = new StreamWriter(output, false, new UTF8Encoding(false)))
                    for (int row = first; row < rows.Count; row++)
                    {
                        var clock = Stopwatch.StartNew();
                        PredictAnswer answer = client.PredictAsync(RequestEndingAt(rows, row), TimeSpan.FromSeconds(10))
                                                     .GetAwaiter().GetResult();
                        latencies.Add(clock.Elapsed.TotalMilliseconds);
                        writer.WriteLine(Json.ToText(new ReplayLine { Row = row, Answer = answer }));
                    }
                latencies.Sort();
                Console.WriteLine("data replay requests={0} p50_ms={1:0.0} p99_ms={2:0.0}", latencies.Count,
                                  latencies[latencies.Count / 2], latencies[(int)(latencies.Count * 0.99)]);
            });
        }

        // ------------------------------------------------------------ strategy through the shim

        [DataContract]
        private sealed class BarCalls
        {
            [DataMember(Name = "bar", Order = 0)] public int Bar;
            [DataMember(Name = "calls", Order = 1)] public List<string> Calls;
        }

        private static SmcAutobot LoadStrategy(string url, string key, List<BarRow> rows, double full, int contracts)
        {
            var strategy = new SmcAutobot();
            strategy.ShimEnter(State.SetDefaults);
            strategy.ServiceUrl = url;
            strategy.ApiKey = key;
            strategy.DeadlineMs = 5000;   // the parity run measures decisions, not latency (tested in http)
            strategy.FullSizeThreshold = full;
            strategy.Contracts = contracts;
            var bars = new Bars(rows.Select(r => r.Wall).ToArray(), rows.Select(r => r.Open).ToArray(),
                                rows.Select(r => r.High).ToArray(), rows.Select(r => r.Low).ToArray(),
                                rows.Select(r => r.Close).ToArray(), rows.Select(r => r.Volume).ToArray(),
                                rows.Select(r => r.LastOfSession).ToArray());
            strategy.ShimLoad(bars, new BarsPeriod { BarsPeriodType = BarsPeriodType.Minute, Value = 1 },
                              new Instrument { MasterInstrument = new MasterInstrument { Name = "ES", TickSize = 0.25 } });
            strategy.ShimEnter(State.Configure);
            strategy.ShimEnter(State.DataLoaded);
            strategy.ShimEnter(State.Historical);
            return strategy;
        }

        private static void GoRealtime(SmcAutobot strategy, int bars)
        {
            for (int i = 0; i < bars; i++)
                strategy.ShimBarClosed(i);
            Check(strategy.ShimCalls.Count == 0, "no orders on historical bars: " + string.Join("; ", strategy.ShimCalls));
            strategy.ShimEnter(State.Transition);
            strategy.ShimEnter(State.Realtime);
            Action report;
            Check(strategy.ShimCustomEvents.TryTake(out report, TimeSpan.FromSeconds(60)), "the history upload reports");
            report();
        }

        private static void StrategyRun(string url, string key, string barsPath, string zoneId, int first, string positionsPath,
                                        double full, int contracts, string output)
        {
            List<BarRow> rows = ReadBars(barsPath);
            var positions = File.ReadAllLines(positionsPath).Skip(1).Select(l => l.Split(','))
                                .ToDictionary(f => int.Parse(f[0], Inv), f => int.Parse(f[1], Inv));
            NinjaTrader.Core.Globals.GeneralOptions.TimeZoneInfo = TimeZoneInfo.FindSystemTimeZoneById(zoneId);

            Test("strategy_defaults", () =>
            {
                var strategy = new SmcAutobot();
                strategy.ShimEnter(State.SetDefaults);
                Check(strategy.Calculate == Calculate.OnBarClose && strategy.EntriesPerDirection == 1
                      && strategy.IsExitOnSessionCloseStrategy && strategy.DeadlineMs == 300 && strategy.RequiredBars == 49
                      && !strategy.PredictHistoricalBars && strategy.UploadHistory, "on bar close, no pyramiding, flat at the close");
                strategy.ShimEnter(State.Terminated);  // an instance that never loaded data
            });

            Test("strategy_trades_the_answers_bar_by_bar", () =>
            {
                SmcAutobot strategy = LoadStrategy(url, key, rows, full, contracts);
                GoRealtime(strategy, first);
                string upload = strategy.ShimOutput.Last();
                Check(upload.Contains("history uploaded: "), upload);
                Console.WriteLine("data first_upload {0}", upload);
                using (var writer = new StreamWriter(output, false, new UTF8Encoding(false)))
                    for (int i = first; i < rows.Count; i++)
                    {
                        int position;
                        positions.TryGetValue(i, out position);
                        strategy.Position.MarketPosition = position > 0 ? MarketPosition.Long : position < 0 ? MarketPosition.Short
                                                                                                          : MarketPosition.Flat;
                        strategy.Position.Quantity = Math.Abs(position);
                        int before = strategy.ShimCalls.Count;
                        strategy.ShimBarClosed(i);
                        if (!rows[i].LastOfSession)
                        {
                            Action answer;
                            Check(strategy.ShimCustomEvents.TryTake(out answer, TimeSpan.FromSeconds(10)), "an answer for bar " + i);
                            answer();  // on "NinjaTrader's thread", as TriggerCustomEvent does
                        }
                        Check(strategy.ShimCustomEvents.Count == 0, "one request per bar");
                        writer.WriteLine(Json.ToText(new BarCalls { Bar = i, Calls = strategy.ShimCalls.Skip(before).ToList() }));
                    }
                string zoneLine = rows[first].Wall.ToString("yyyy-MM-dd HH:mm:ss", Inv) + " closed at "
                                  + rows[first].Utc.ToString("yyyy-MM-ddTHH:mm:ss", Inv);
                Check(strategy.ShimOutput.Any(l => l.Contains("bar times from " + zoneId + ": the bar of " + zoneLine)),
                      "the time-zone line: " + string.Join(" | ", strategy.ShimOutput.Take(3)));
                var misses = strategy.ShimOutput.Where(l => l.Contains("no new entry")).ToList();
                Check(misses.Count == 0, "no missed answer: " + string.Join(" | ", misses.Take(3)));
                strategy.ShimEnter(State.Terminated);
            });

            Test("a_recreated_strategy_uploads_again_idempotently", () =>
            {
                // a second chart or a re-enabled strategy: a new instance, the same process and HttpClient
                SmcAutobot strategy = LoadStrategy(url, key, rows, full, contracts);
                GoRealtime(strategy, first);
                string upload = strategy.ShimOutput.Last();
                Check(upload.Contains("history uploaded: 0 new, " + first + " known, 0 differing"), upload);
                strategy.ShimEnter(State.Terminated);
            });

            Test("a_missed_answer_means_no_entry_and_is_logged", () =>
            {
                SmcAutobot strategy = LoadStrategy("http://127.0.0.1:" + FreePort(), key, rows, full, contracts);
                strategy.UploadHistory = false;
                for (int i = 0; i < first; i++)
                    strategy.ShimBarClosed(i);
                strategy.ShimEnter(State.Realtime);
                int bar = Enumerable.Range(first, rows.Count - first).First(i => !rows[i].LastOfSession);
                strategy.ShimBarClosed(bar);
                Action answer;
                Check(strategy.ShimCustomEvents.TryTake(out answer, TimeSpan.FromSeconds(10)), "the failure comes back");
                answer();
                Check(strategy.ShimCalls.Count == 0, "no orders");
                Check(strategy.ShimOutput.Any(l => l.StartsWith("Warning: ") && l.Contains("no new entry")),
                      "logged: " + string.Join(" | ", strategy.ShimOutput));
                strategy.ShimEnter(State.Terminated);
            });

            Test("strategy_analyzer_option_calls_the_service_on_historical_bars", () =>
            {
                SmcAutobot strategy = LoadStrategy(url, key, rows, full, contracts);
                strategy.PredictHistoricalBars = true;
                int requests = 0;
                for (int i = 0; i < Math.Min(rows.Count, 60); i++)
                {
                    strategy.ShimBarClosed(i);
                    requests += i >= 48 && !rows[i].LastOfSession ? 1 : 0;
                }
                Check(strategy.ShimCustomEvents.Count == 0 && requests > 0, "answered on the bar, no custom event");
                Check(!strategy.ShimOutput.Any(l => l.Contains("no new entry")), string.Join(" | ", strategy.ShimOutput));
                strategy.ShimEnter(State.Terminated);
            });
        }
    }

    // ------------------------------------------------------------ a scripted HTTP responder

    internal sealed class Step
    {
        public int StatusCode;
        public string Body;
        public int DelayMs;
        public bool ResetConnection;
        public bool ForwardToService;

        public static Step Status(int status, string body = null, int delayMs = 0)
        {
            return new Step { StatusCode = status, DelayMs = delayMs,
                              Body = body ?? "{\"error\":\"scripted " + status + "\",\"code\":" + status + ",\"details\":{}}" };
        }

        public static Step Reset() { return new Step { ResetConnection = true }; }
        public static Step Forward(int delayMs = 0) { return new Step { ForwardToService = true, DelayMs = delayMs }; }
    }

    /// <summary>Answers each request with the next step of its script (the last one repeats): a
    /// status, a reset connection, a delay, or the real service's answer to the same request.</summary>
    internal sealed class Responder : IDisposable
    {
        private static readonly HttpClient Upstream = new HttpClient();
        private readonly TcpListener listener;
        private readonly Step[] script;
        private readonly string service;
        private int requests;

        public Responder(string service, params Step[] script)
        {
            this.service = service.TrimEnd('/');
            this.script = script;
            listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            Url = "http://127.0.0.1:" + ((IPEndPoint)listener.LocalEndpoint).Port;
            new Thread(Accept) { IsBackground = true }.Start();
        }

        public string Url { get; }
        public int Requests { get { return Volatile.Read(ref requests); } }

        public void Dispose() { listener.Stop(); }

        private void Accept()
        {
            while (true)
            {
                TcpClient connection;
                try { connection = listener.AcceptTcpClient(); }
                catch (Exception) { return; }
                new Thread(() => Serve(connection)) { IsBackground = true }.Start();
            }
        }

        private void Serve(TcpClient connection)
        {
            using (connection)
            {
                try
                {
                    NetworkStream stream = connection.GetStream();
                    string head;
                    byte[] body = ReadRequest(stream, out head);
                    if (head == null)
                        return;
                    int number = Interlocked.Increment(ref requests);
                    Step step = script[Math.Min(number, script.Length) - 1];
                    if (step.DelayMs > 0)
                        Thread.Sleep(step.DelayMs);
                    if (step.ResetConnection)
                    {
                        connection.Client.LingerState = new LingerOption(true, 0);  // RST, not FIN
                        return;
                    }
                    int status = step.StatusCode;
                    string text = step.Body;
                    if (step.ForwardToService)
                    {
                        string path = head.Split(' ')[1];
                        string key = head.Split(new[] { "\r\n" }, StringSplitOptions.None)
                                         .Where(l => l.StartsWith("X-API-Key:", StringComparison.OrdinalIgnoreCase))
                                         .Select(l => l.Substring(10).Trim()).FirstOrDefault() ?? "";
                        using (var forward = new HttpRequestMessage(HttpMethod.Post, service + path))
                        {
                            forward.Headers.Add("X-API-Key", key);
                            forward.Content = new ByteArrayContent(body);
                            forward.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
                            using (HttpResponseMessage answer = Upstream.SendAsync(forward).GetAwaiter().GetResult())
                            {
                                status = (int)answer.StatusCode;
                                text = answer.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                            }
                        }
                    }
                    byte[] payload = Encoding.UTF8.GetBytes(text);
                    byte[] header = Encoding.ASCII.GetBytes("HTTP/1.1 " + status + " Scripted\r\nContent-Type: application/json\r\n"
                                                            + "Content-Length: " + payload.Length + "\r\nConnection: close\r\n\r\n");
                    stream.Write(header, 0, header.Length);
                    stream.Write(payload, 0, payload.Length);
                }
                catch (Exception)
                {
                    // the client gave up (its deadline): nothing to answer
                }
            }
        }

        private static byte[] ReadRequest(NetworkStream stream, out string head)
        {
            var buffer = new MemoryStream();
            var chunk = new byte[8192];
            int end = -1;
            while (end < 0)
            {
                int read = stream.Read(chunk, 0, chunk.Length);
                if (read <= 0)
                {
                    head = null;
                    return null;
                }
                buffer.Write(chunk, 0, read);
                end = IndexOf(buffer.GetBuffer(), (int)buffer.Length, Encoding.ASCII.GetBytes("\r\n\r\n"));
            }
            byte[] all = buffer.ToArray();
            head = Encoding.ASCII.GetString(all, 0, end);
            int length = head.Split(new[] { "\r\n" }, StringSplitOptions.None)
                             .Where(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))
                             .Select(l => int.Parse(l.Substring(15).Trim(), CultureInfo.InvariantCulture)).FirstOrDefault();
            var body = new MemoryStream();
            body.Write(all, end + 4, all.Length - end - 4);
            while (body.Length < length)
            {
                int read = stream.Read(chunk, 0, chunk.Length);
                if (read <= 0)
                    break;
                body.Write(chunk, 0, read);
            }
            return body.ToArray();
        }

        private static int IndexOf(byte[] data, int length, byte[] pattern)
        {
            for (int i = 0; i + pattern.Length <= length; i++)
            {
                int j = 0;
                while (j < pattern.Length && data[i + j] == pattern[j])
                    j++;
                if (j == pattern.Length)
                    return i;
            }
            return -1;
        }
    }
}
